"""The change-detection network: an early-fusion U-Net and its loss.

Pre and post are stacked as channels (2C) into a segmentation-models-pytorch U-Net with one output
channel (change logits). ``encoder_weights=None``: nothing is downloaded, ever.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F  # noqa: N812  (PyTorch's own convention)
from torch import Tensor, nn

from mlops_assets.core.cd.config import TrainConfig

IGNORE = 255


def build_unet(in_channels: int, config: TrainConfig) -> nn.Module:
    """A U-Net for ``in_channels`` stacked bands; randomly initialised."""
    return smp.Unet(
        encoder_name=config.encoder,
        encoder_weights=None,
        encoder_depth=config.encoder_depth,
        decoder_channels=list(config.decoder_channels),
        in_channels=in_channels,
        classes=1,
    )


def model_spec(in_channels: int, config: TrainConfig) -> dict[str, Any]:
    """What `build_unet` needs to rebuild the architecture (saved next to the weights)."""
    return {
        "in_channels": in_channels,
        "encoder": config.encoder,
        "encoder_depth": config.encoder_depth,
        "decoder_channels": list(config.decoder_channels),
    }


def rebuild_unet(spec: dict[str, Any]) -> nn.Module:
    """Inverse of `model_spec`."""
    return smp.Unet(
        encoder_name=spec["encoder"],
        encoder_weights=None,
        encoder_depth=int(spec["encoder_depth"]),
        decoder_channels=list(spec["decoder_channels"]),
        in_channels=int(spec["in_channels"]),
        classes=1,
    )


class BceDiceLoss(nn.Module):
    """Binary cross-entropy plus soft Dice, over pixels whose target is not ``IGNORE``."""

    def __init__(self, dice_weight: float = 1.0, eps: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.eps = eps

    def forward(
        self,
        logits: Tensor,  # [B, 1, H, W]
        target: Tensor,  # [B, H, W] with 0, 1, IGNORE
    ) -> Tensor:
        """The loss (0 if no pixel is labelled)."""
        keep = target != IGNORE
        if not bool(keep.any()):
            return logits.sum() * 0.0
        x = logits[:, 0][keep]
        y = target[keep].to(x.dtype)
        bce = F.binary_cross_entropy_with_logits(x, y)
        p = torch.sigmoid(x)
        dice = 1.0 - (2.0 * (p * y).sum() + self.eps) / (p.sum() + y.sum() + self.eps)
        return bce + self.dice_weight * dice
