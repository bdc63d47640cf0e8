"""Where a PyTorch step runs and how much of the CPU it may use, shared by every model family."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Generator[None]:
    """PyTorch's intra-op CPU threads set to ``count`` (0: unchanged) inside the block.

    Small work (a 64 px splat render, a batch of 128 px tiles) gains little from a second thread
    and costs the other core: on 2 cores the NVS rasteriser used about 4x the CPU time with 2
    threads for the same wall time as with 1. The count is process-wide, so it is restored after.
    """
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def select_device(preference: str) -> torch.device:
    """``cuda`` when asked for or available (``auto``), else ``cpu``.

    Raises:
        RuntimeError: ``cuda`` was asked for and there is none.
    """
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available")
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
