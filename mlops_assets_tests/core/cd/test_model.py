from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812  (PyTorch's own convention)

from mlops_assets.core.cd.config import TrainConfig, preset
from mlops_assets.core.cd.model import IGNORE, BceDiceLoss, build_unet, model_spec, rebuild_unet

TINY = preset(TrainConfig, "tiny")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 16, 16, generator=generator)  # [B, 1, H, W]
    target = torch.randint(0, 2, (2, 16, 16), generator=generator)  # [B, H, W]
    target[:, :4] = IGNORE
    return logits, target


def test_loss_is_bce_plus_dice_over_labelled_pixels() -> None:
    logits, target = _batch()
    keep = target != IGNORE
    x, y = logits[:, 0][keep], target[keep].float()
    bce = F.binary_cross_entropy_with_logits(x, y)
    p = torch.sigmoid(x)
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    assert BceDiceLoss(dice_weight=0.0)(logits, target) == pytest.approx(float(bce), rel=1e-6)
    assert BceDiceLoss(dice_weight=2.0)(logits, target) == pytest.approx(
        float(bce + 2 * dice), rel=1e-6
    )


def test_ignored_pixels_change_neither_the_loss_nor_the_gradient() -> None:
    logits, target = _batch()
    loss_fn = BceDiceLoss()
    other = logits.clone()
    other[:, 0, :4] = 1e4  # wildly wrong where the target is IGNORE
    assert loss_fn(other, target) == loss_fn(logits, target)
    leaf = logits.clone().requires_grad_(True)
    loss_fn(leaf, target).backward()
    assert leaf.grad is not None
    assert (leaf.grad[:, 0, :4] == 0).all() and (leaf.grad[:, 0, 4:] != 0).any()


def test_a_confident_correct_prediction_costs_almost_nothing() -> None:
    _, target = _batch()
    logits = (target.float() * 2 - 1)[:, None] * 30  # +30 where 1, -30 where 0
    logits[:, 0, :4] = 0.0
    assert float(BceDiceLoss()(logits, target)) < 1e-6


def test_nothing_labelled_gives_zero_and_a_usable_gradient() -> None:
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = BceDiceLoss()(logits, torch.full((2, 8, 8), IGNORE))
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph: a batch of nodata does not break training
    assert logits.grad is not None and (logits.grad == 0).all()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_network")
def test_the_unet_is_built_offline_with_random_weights() -> None:
    torch.manual_seed(0)
    first = build_unet(8, TINY)
    torch.manual_seed(1)
    second = build_unet(8, TINY)
    stem, other = (next(p for p in net.parameters() if p.ndim == 4) for net in (first, second))
    assert stem.shape[1] == 8  # pre and post stacked: 2 x 4 bands
    assert not torch.equal(stem, other)
    out = first.eval()(torch.randn(3, 8, 64, 48))
    assert out.shape == (3, 1, 64, 48)  # one channel of change logits


@pytest.mark.usefixtures("no_network")
def test_rebuild_from_spec_gives_the_same_architecture() -> None:
    torch.manual_seed(0)
    net = build_unet(6, TINY).eval()
    spec = json.loads(json.dumps(model_spec(6, TINY)))  # it is stored as JSON
    assert spec == {
        "in_channels": 6,
        "encoder": "tu-regnetx_002",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
    }
    rebuilt = rebuild_unet(spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in net.state_dict().items()
    }
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 6, 32, 32)
    assert torch.equal(rebuilt.eval()(x), net(x))
