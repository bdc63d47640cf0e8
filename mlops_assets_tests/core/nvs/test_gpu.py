"""The CPU rasteriser against gsplat's CUDA rasterisation, on the same Gaussians and cameras."""

from __future__ import annotations

import pytest
import torch

from mlops_assets.core.nvs.gaussians import sh_coefficients
from mlops_assets.core.nvs.raster_cpu import render

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

W, H = 64, 48


def random_splats(n: int, sh_degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g) * 0.6,
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.01),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g) + 0.5,
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
        "shN": torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=g) * 0.1,
    }


def cameras() -> tuple[torch.Tensor, torch.Tensor]:
    viewmats = torch.eye(4).repeat(2, 1, 1)
    viewmats[:, 2, 3] = 3.0
    viewmats[1, 0, 3] = 0.4
    k = torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]]).repeat(2, 1, 1)
    return viewmats, k


@pytest.mark.parametrize("sh_degree", [0, 2])
def test_cpu_renderer_matches_gsplat_cuda(sh_degree: int) -> None:
    from gsplat import rasterization

    splats = random_splats(3000, sh_degree)
    viewmats, ks = cameras()
    background = torch.tensor([0.1, 0.3, 0.9])
    cpu = {k: v.clone().requires_grad_(True) for k, v in splats.items()}
    gpu = {k: v.cuda().requires_grad_(True) for k, v in splats.items()}
    image_cpu, alpha_cpu, info_cpu = render(cpu, viewmats, ks, W, H, sh_degree, background)
    image_gpu, alpha_gpu, info_gpu = rasterization(
        means=gpu["means"],
        quats=gpu["quats"],
        scales=torch.exp(gpu["scales"]),
        opacities=torch.sigmoid(gpu["opacities"]),
        colors=sh_coefficients(gpu),
        viewmats=viewmats.cuda(),
        Ks=ks.cuda(),
        width=W,
        height=H,
        sh_degree=sh_degree,
        packed=False,
        backgrounds=background.cuda().expand(2, 3),
    )
    # Same culling (opacity-aware radii) and the same images, at float32 tolerance.
    assert torch.equal(info_cpu["radii"], info_gpu["radii"].cpu())
    torch.testing.assert_close(image_cpu, image_gpu.cpu(), atol=2e-4, rtol=0)
    torch.testing.assert_close(alpha_cpu, alpha_gpu.cpu(), atol=2e-4, rtol=0)
    # Gradients through the same loss, relative to their scale.
    weights = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(1))
    (image_cpu * weights).sum().backward()
    (image_gpu * weights.cuda()).sum().backward()
    for key in splats:
        a, b = cpu[key].grad, gpu[key].grad
        assert a is not None and b is not None
        scale = float(b.abs().max()) + 1e-12
        torch.testing.assert_close(a / scale, b.cpu() / scale, atol=2e-3, rtol=0)
