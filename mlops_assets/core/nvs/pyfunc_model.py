"""Trained Gaussian splats as an MLflow pyfunc (models from code): cameras in, images out.

MLflow copies this file into the logged model; the package's `mlops_assets` directory travels with
it as ``code_paths``, so the model loads and renders where the package is not installed.

Artifacts: ``ply`` (the INRIA-layout splats) and ``spec`` (SH degree, background). Input:
``{"viewmats": float32 [N, 4, 4] world-to-camera (COLMAP/OpenCV convention), "Ks": float32
[N, 3, 3]}``; params ``width`` and ``height`` (pixels). Output: float32 [N, H, W, 3] RGB in 0..1,
rendered with gsplat's CUDA rasteriser where CUDA exists and the package's CPU rasteriser
elsewhere.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel

from mlops_assets.core.compute import select_device
from mlops_assets.core.nvs.ply import read_inria_ply
from mlops_assets.core.nvs.train import rasterizer_for


class GaussianSplatModel(PythonModel):
    """A scene's Gaussians, rendered from any pinhole camera."""

    def load_context(self, context: Any) -> None:
        """Read the splats and their spec."""
        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.splats = {
            key: torch.from_numpy(value)
            for key, value in read_inria_ply(Path(context.artifacts["ply"])).items()
        }

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        """Render one image per camera."""
        viewmats = torch.as_tensor(np.asarray(model_input["viewmats"], np.float32))
        ks = torch.as_tensor(np.asarray(model_input["Ks"], np.float32))
        if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4) or ks.shape != (len(viewmats), 3, 3):
            raise ValueError(
                f"viewmats {tuple(viewmats.shape)} must be [N, 4, 4] and Ks {tuple(ks.shape)} "
                "[N, 3, 3]"
            )
        params = params or {}
        width, height = int(params.get("width", 256)), int(params.get("height", 256))
        device = select_device("auto")
        rasterize = rasterizer_for(device, cpu_tile_size=16)
        splats = {k: v.to(device) for k, v in self.splats.items()}
        background = torch.tensor(self.spec["background"], dtype=torch.float32, device=device)
        with torch.no_grad():
            images, _, _ = rasterize(
                splats,
                viewmats.to(device),
                ks.to(device),
                width,
                height,
                int(self.spec["sh_degree"]),
                background,
            )
        return images.clamp(0.0, 1.0).cpu().numpy()


set_model(GaussianSplatModel())
