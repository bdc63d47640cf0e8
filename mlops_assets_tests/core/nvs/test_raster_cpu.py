"""The tiled CPU rasteriser against a dense, sequential reference of gsplat's CUDA semantics."""

from __future__ import annotations

import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics  # pyright: ignore[reportPrivateUsage]
from gsplat.strategy import DefaultStrategy
from torch import Tensor

from mlops_assets.core.nvs.gaussians import Splats, sh_coefficients
from mlops_assets.core.nvs.raster_cpu import ALPHA_THRESHOLD, project, render

W, H = 40, 32


def random_splats(n: int, sh_degree: int = 1, seed: int = 0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    n_bases = (sh_degree + 1) ** 2
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.randn(n, 3, generator=g) * 0.6),
            "scales": torch.nn.Parameter(torch.log(torch.rand(n, 3, generator=g) * 0.1 + 0.02)),
            "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
            "opacities": torch.nn.Parameter(torch.randn(n, generator=g) + 1.0),
            "sh0": torch.nn.Parameter(torch.randn(n, 1, 3, generator=g) * 0.5),
            "shN": torch.nn.Parameter(torch.randn(n, n_bases - 1, 3, generator=g) * 0.1),
        }
    )


def camera(distance: float = 3.0) -> tuple[Tensor, Tensor]:
    viewmat = torch.eye(4)
    viewmat[2, 3] = distance
    k = torch.tensor([[45.0, 0.0, W / 2], [0.0, 45.0, H / 2], [0.0, 0.0, 1.0]])
    return viewmat, k


def dense_reference(
    splats: Splats,
    viewmat: Tensor,  # [4, 4]
    k: Tensor,  # [3, 3]
    sh_degree: int,
    background: Tensor,  # [3]
) -> tuple[Tensor, Tensor]:
    """Every pixel against every Gaussian, one Gaussian at a time, as the CUDA kernel loops."""
    means = splats["means"]
    opacities = torch.sigmoid(splats["opacities"])
    radii, means2d, depths, conics = project(
        means, splats["quats"], torch.exp(splats["scales"]), opacities, viewmat[None], k[None], W, H
    )
    ids = torch.nonzero((radii[0] > 0).all(-1)).squeeze(1)
    ids = ids[torch.argsort(depths[0, ids], stable=True)]
    campos = torch.linalg.inv(viewmat)[:3, 3]
    coeffs = sh_coefficients(splats)[ids, : (sh_degree + 1) ** 2]
    colors = _spherical_harmonics(sh_degree, means[ids] - campos, coeffs)
    colors = torch.clamp_min(colors + 0.5, 0.0)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5
    t = torch.ones(H * W)
    image = torch.zeros(H * W, 3)
    done = torch.zeros(H * W, dtype=torch.bool)
    for j, g in enumerate(ids.tolist()):
        dx, dy = means2d[0, g, 0] - px, means2d[0, g, 1] - py
        a, b, c = conics[0, g]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp_max(opacities[g] * torch.exp(-sigma), 0.999)
        use = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done
        next_t = t * (1 - alpha)
        stop = use & (next_t <= 1e-4)
        done = done | stop
        use = use & ~stop
        image = image + torch.where(use, alpha * t, 0.0)[:, None] * colors[j]
        t = torch.where(use, next_t, t)
    image = image + t[:, None] * background
    return image.reshape(H, W, 3), (1 - t).reshape(H, W, 1)


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_matches_dense_reference(tile_size: int) -> None:
    splats = random_splats(300)
    viewmat, k = camera()
    background = torch.tensor([0.2, 0.5, 1.0])
    with torch.no_grad():
        expected, expected_alpha = dense_reference(splats, viewmat, k, 1, background)
        image, alpha, info = render(splats, viewmat, k, W, H, 1, background, tile_size=tile_size)
    assert image.shape == (H, W, 3) and alpha.shape == (H, W, 1)
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, expected_alpha, atol=1e-5, rtol=0)
    assert 0 < info["n_visible"][0] <= 300
    assert alpha.max() > 0.9  # the scene covers part of the image: the check is not vacuous


def test_saturated_pixels_stop_like_gsplat() -> None:
    """Many opaque layers: the transmittance cut-off decides the result."""
    splats = random_splats(400, seed=3)
    with torch.no_grad():
        splats["opacities"].fill_(6.0)
        splats["scales"].add_(1.0)
    viewmat, k = camera()
    background = torch.zeros(3)
    with torch.no_grad():
        expected, _ = dense_reference(splats, viewmat, k, 1, background)
        image, alpha, _ = render(splats, viewmat, k, W, H, 1, background, tile_size=8)
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=0)
    assert alpha.max() > 0.999


def test_culling_does_not_change_the_image() -> None:
    """Gaussians behind the camera, outside the frustum or transparent add nothing."""
    splats = random_splats(200, seed=1)
    viewmat, k = camera()
    extra = random_splats(200, seed=2)
    with torch.no_grad():
        extra["means"][:70, 2] = -5.0  # behind the camera (z_cam = -2)
        extra["means"][70:140, 0] = 40.0  # far outside the frustum
        extra["opacities"][140:] = -8.0  # opacity below 1/255
    merged = {k: torch.cat([splats[k], extra[k]]) for k in splats}
    background = torch.ones(3)
    with torch.no_grad():
        image, _, _ = render(splats, viewmat, k, W, H, 1, background)
        image2, _, info = render(merged, viewmat, k, W, H, 1, background)
    assert (info["radii"][0, 200:] == 0).all()
    torch.testing.assert_close(image2, image, atol=0, rtol=0)


def test_gradients_reach_every_parameter() -> None:
    splats = random_splats(120)
    viewmat, k = camera()
    image, _, info = render(splats, viewmat, k, W, H, 1, torch.ones(3))
    info["means2d"].retain_grad()
    (image * torch.linspace(0, 1, 3)).sum().backward()
    for name, p in splats.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert info["means2d"].grad is not None and info["means2d"].grad.abs().sum() > 0


def test_gradients_match_finite_differences() -> None:
    splats = random_splats(6, seed=4)
    with torch.no_grad():
        splats["means"].mul_(0.3)
        splats["scales"].add_(1.0)
        splats["opacities"].fill_(0.0)
    viewmat, k = camera()
    double = torch.nn.ParameterDict({k: torch.nn.Parameter(v.double()) for k, v in splats.items()})
    weights = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss() -> Tensor:
        image, _, _ = render(double, viewmat.double(), k.double(), W, H, 1, torch.ones(3).double())
        return (image * weights).sum()

    loss().backward()
    eps = 1e-6
    for name in ("means", "scales", "quats", "opacities", "sh0", "shN"):
        p = double[name]
        assert p.grad is not None
        flat = p.data.view(-1)
        for i in (0, flat.numel() // 2, flat.numel() - 1):
            with torch.no_grad():
                flat[i] += eps
                up = loss()
                flat[i] -= 2 * eps
                down = loss()
                flat[i] += eps
            numeric = float((up - down) / (2 * eps))
            analytic = float(p.grad.view(-1)[i])
            assert abs(numeric - analytic) <= 1e-4 * max(1.0, abs(numeric)), (name, i)


def test_batched_cameras_and_default_strategy_on_cpu() -> None:
    splats = random_splats(150)
    viewmat, k = camera()
    viewmats = torch.stack([viewmat, viewmat])
    viewmats[1, 0, 3] = 0.3
    images, alphas, info = render(splats, viewmats, k, W, H, 1, torch.ones(3))
    assert images.shape == (2, H, W, 3) and alphas.shape == (2, H, W, 1)
    assert info["means2d"].shape == (2, 150, 2) and info["radii"].shape == (2, 150, 2)
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=0.0)
    optimizers: dict[str, torch.optim.Optimizer] = {
        k: torch.optim.Adam([{"params": p, "lr": 1e-3, "name": k}]) for k, p in splats.items()
    }
    state = strategy.initialize_state(scene_scale=1.0)
    strategy.step_pre_backward(splats, optimizers, state, 1, info)
    images.sum().backward()
    strategy.step_post_backward(splats, optimizers, state, 1, info, packed=False)
    assert len(splats["means"]) > 150  # every visible Gaussian was duplicated or split
