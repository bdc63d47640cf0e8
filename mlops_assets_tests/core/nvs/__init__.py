"""Helpers for the novel-view-synthesis tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from gsplat.strategy import DefaultStrategy

#: What CUDA's caching allocator says when densification outgrows the device.
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 1.50 GiB is free."
)


def out_of_memory_at(
    monkeypatch: pytest.MonkeyPatch,
    fail_step: int,
    seen: dict[str, int],
    before: Callable[[], None] | None = None,
) -> None:
    """gsplat's densification raises torch's out-of-memory error at step ``fail_step``.

    The error is the one CUDA raises (``torch.OutOfMemoryError``) and it comes from where it
    comes from on a GPU, the strategy's post-backward step. ``seen["gaussians"]`` gets the
    Gaussian count the failing step started with; ``before`` runs just before the raise.
    """
    real = DefaultStrategy.step_post_backward

    def densify(self: DefaultStrategy, *args: Any, **kwargs: Any) -> None:
        params, step = args[0], args[3]
        if step == fail_step:
            seen["gaussians"] = len(params["means"])
            if before is not None:
                before()
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        real(self, *args, **kwargs)

    monkeypatch.setattr(DefaultStrategy, "step_post_backward", densify)
