"""The change-detection U-Net as an MLflow pyfunc (models from code).

MLflow copies this file into the logged model, so it is self-contained: it imports torch,
segmentation-models-pytorch, numpy and mlflow only, never this package, and a model served with
``mlflow models serve`` needs nothing else.

Input: ``{"pre": float32 [N, C, H, W], "post": float32 [N, C, H, W]}`` in the sensor's units;
each image is normalised per band with the statistics of its scene when the caller passes them as
params (``pre_mean``, ``pre_std``, ``post_mean``, ``post_std``, each a list of C floats), else with
the batch's own. Output: change probability, float32 [N, H, W].

Served with ``mlflow models serve``, an invalid request (shapes that differ or are not
[N, C, H, W], another band count than the model's, statistics of the wrong length, non-finite
values, more than `MAX_PIXELS` pixels) is answered HTTP 400 with the reason: `predict` raises
`MlflowException` with ``INVALID_PARAMETER_VALUE``, which the scoring server returns as it is,
never a stack trace (any other exception would be returned with its traceback).
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel

#: Most pixels (N x H x W) one request may ask for: 1 Mpx, sixteen 256 px windows. MLflow has
#: parsed the whole JSON body into Python objects before this is checked, so the bound that holds
#: is the body size (cd-serving's ``--max-body-mb``); this one keeps the parse of a well-formed
#: request small: one request of 1 Mpx (4 bands, uint16 values, 62 MiB of JSON) took the server
#: from 0.9 to 1.7 GiB peak RSS (default preset). At 16 Mpx that would be about 13 GiB.
MAX_PIXELS = 1024 * 1024
_STATS = ("pre_mean", "pre_std", "post_mean", "post_std")


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


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
        if not isinstance(model_input, dict) or not {"pre", "post"} <= set(model_input):  # pyright: ignore[reportUnknownArgumentType]
            raise _invalid('inputs must be {"pre": [N, C, H, W], "post": [N, C, H, W]}')
        try:
            pre = np.asarray(model_input["pre"], np.float32)
            post = np.asarray(model_input["post"], np.float32)
        except (TypeError, ValueError) as exc:
            raise _invalid(f"pre and post must be numeric arrays [N, C, H, W]: {exc}") from None
        if pre.shape != post.shape or pre.ndim != 4:
            raise _invalid(f"pre {pre.shape} and post {post.shape} must both be [N, C, H, W]")
        n, bands, h, w = pre.shape
        expected = int(self.spec["in_channels"]) // 2
        if bands != expected:
            raise _invalid(f"pre and post have {bands} bands; this model takes {expected}")
        if min(n, h, w) < 1 or n * h * w > MAX_PIXELS:
            raise _invalid(f"N x H x W = {n * h * w} pixels: must be 1 to {MAX_PIXELS}")
        if not (np.isfinite(pre).all() and np.isfinite(post).all()):
            raise _invalid("pre and post must be finite (no NaN or infinity)")
        stats = {k: v for k, v in (params or {}).items() if v is not None and len(v)}
        for name in _STATS:
            if name in stats and len(stats[name]) != bands:
                raise _invalid(f"params.{name} has {len(stats[name])} values for {bands} bands")
            if name.endswith("_std") and name in stats and min(stats[name]) <= 0:
                raise _invalid(f"params.{name} must be positive")
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
