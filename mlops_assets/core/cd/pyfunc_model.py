"""The change-detection U-Net as an MLflow pyfunc (models from code).

MLflow copies this file into the logged model, so it is self-contained: it imports torch,
segmentation-models-pytorch, numpy and mlflow only, never this package, and a model served with
``mlflow models serve`` needs nothing else.

Input: ``{"pre": float32 [N, C, H, W], "post": float32 [N, C, H, W]}`` in the sensor's units;
each image is normalised per band with the statistics of its scene when the caller passes them as
params (``pre_mean``, ``pre_std``, ``post_mean``, ``post_std``, each a list of C floats), else with
the batch's own. Output: change probability, float32 [N, H, W].
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel


def _normalise(
    images: np.ndarray[Any, Any], mean: Any | None, std: Any | None
) -> np.ndarray[Any, Any]:
    data = images.astype(np.float32)
    if mean is None or std is None:
        mean = data.mean(axis=(0, 2, 3))
        std = data.std(axis=(0, 2, 3))
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.maximum(np.asarray(std, np.float32).reshape(1, -1, 1, 1), 1e-6)
    return (data - m) / s


class ChangeDetectionModel(PythonModel):
    """Early-fusion U-Net: pre and post stacked as channels; sigmoid of the one output channel."""

    def load_context(self, context: Any) -> None:
        """Rebuild the architecture from ``spec`` and load the trained weights."""
        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.spec = spec
        self.net = smp.Unet(
            encoder_name=spec["encoder"],
            encoder_weights=None,
            encoder_depth=int(spec["encoder_depth"]),
            decoder_channels=list(spec["decoder_channels"]),
            in_channels=int(spec["in_channels"]),
            classes=1,
        )
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        """Change probabilities for a batch of co-registered pre/post windows."""
        pre, post = np.asarray(model_input["pre"]), np.asarray(model_input["post"])
        stats = {k: v for k, v in (params or {}).items() if v is not None and len(v)}
        if pre.shape != post.shape or pre.ndim != 4:
            raise ValueError(f"pre {pre.shape} and post {post.shape} must both be [N, C, H, W]")
        stacked = np.concatenate(
            [
                _normalise(pre, stats.get("pre_mean"), stats.get("pre_std")),
                _normalise(post, stats.get("post_mean"), stats.get("post_std")),
            ],
            axis=1,
        )
        _, _, h, w = stacked.shape
        multiple = 2 ** int(self.spec["encoder_depth"])
        ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        batch = torch.from_numpy(stacked)
        if (ph, pw) != (h, w):
            batch = torch.nn.functional.pad(batch, (0, pw - w, 0, ph - h), mode="replicate")
        with torch.no_grad():
            return torch.sigmoid(self.net(batch)[:, 0, :h, :w]).numpy()


set_model(ChangeDetectionModel())
