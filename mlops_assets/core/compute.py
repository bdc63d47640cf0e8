"""Where a PyTorch step runs, how much of the CPU it may use and how it is seeded.

Shared by every model family (change detection and Gaussian splatting train through these).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Generator

import numpy as np
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


def select_device(preference: str, error: type[Exception] = RuntimeError) -> torch.device:
    """``cuda`` when asked for or available (``auto``), else ``cpu``.

    Raises:
        Exception: ``error`` (the caller's own error type), when ``cuda`` was asked for and there
            is none.
    """
    if preference == "cuda" and not torch.cuda.is_available():
        raise error("device='cuda' was requested but CUDA is not available")
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a generator (data loading, view order).

    ``deterministic`` also makes cuDNN pick deterministic kernels (change detection asks for it;
    the splat rasterisers do not use cuDNN).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)
