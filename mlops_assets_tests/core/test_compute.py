from __future__ import annotations

import pytest
import torch

from mlops_assets.core.compute import select_device, torch_threads


def test_torch_threads_sets_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0: left as it is
        assert torch.get_num_threads() == before


def test_the_cpu_unless_cuda_is_there() -> None:
    assert select_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="only where there is no CUDA")
def test_cuda_asked_for_without_cuda_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="device='cuda' was requested but CUDA is not"):
        select_device("cuda")
