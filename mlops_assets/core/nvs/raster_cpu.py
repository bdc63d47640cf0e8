"""A differentiable, tiled 3D Gaussian rasteriser in pure PyTorch, for CPUs.

Projection and colour come from gsplat's own pure-PyTorch reference pieces
(``_quat_scale_to_covar_preci``, ``_fully_fused_projection``, ``_spherical_harmonics``); the
compositing is ours and follows gsplat's CUDA kernels (``RasterizeToPixels3DGSFwd.cu``):

- pixel centres at (x + 0.5, y + 0.5);
- alpha = min(0.999, opacity * exp(-sigma)), sigma = 0.5 d^T conic d; a Gaussian is skipped at a
  pixel where sigma < 0 or alpha < 1/255;
- front-to-back in depth order; a pixel stops (exclusively) at the Gaussian that would take its
  transmittance to 1e-4 or below;
- background added as ``(1 - alpha) * background``.

Culling is gsplat's too: a Gaussian is dropped when it is behind the near plane or beyond the far
plane, when its opacity is below 1/255, or when its opacity-aware screen-space box
(``min(3.33, sqrt(2 ln(255 opacity)))`` sigmas) misses the image. Each remaining Gaussian is
listed in every ``tile_size`` x ``tile_size`` tile its box touches, and each pixel composites only
its tile's list. Outside that box alpha is below 1/255, so culling does not change the image.

Compositing is vectorised over (tile, Gaussian) pairs: the transmittance in front of each pair is
``exp`` of a segmented exclusive cumulative sum of ``log(1 - alpha)`` (float64), so the whole image
is a handful of tensor operations and autograd differentiates it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from gsplat.cuda._torch_impl import (
    _fully_fused_projection,  # pyright: ignore[reportPrivateUsage]
    _quat_scale_to_covar_preci,  # pyright: ignore[reportPrivateUsage]
    _spherical_harmonics,  # pyright: ignore[reportPrivateUsage]
)
from torch import Tensor

from mlops_assets.core.nvs.gaussians import Splats, sh_coefficients

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_MIN = 1e-4
EXTEND_SIGMAS = 3.33


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] (activated)
    opacities: Tensor,  # [N] (activated)
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]  # noqa: N803 - gsplat's name
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project Gaussians: radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3].

    Radii are gsplat's opacity-aware ones (``ProjectionEWA3DGSFused.cu``); zero means culled.
    """
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    assert covars is not None
    _, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane
    )
    with torch.no_grad():
        a, b, c = conics.unbind(-1)
        inv_det = 1.0 / (a * c - b * b)  # the determinant of the blurred 2D covariance
        cov_xx, cov_yy = c * inv_det, a * inv_det
        opac = opacities.expand_as(depths)
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp_max(EXTEND_SIGMAS)
        radii = torch.stack(
            [torch.ceil(extend * cov_xx.sqrt()), torch.ceil(extend * cov_yy.sqrt())], dim=-1
        )
        det_ok = torch.isfinite(inv_det) & (inv_det > 0)
        valid = (
            det_ok
            & (depths > near_plane)
            & (depths < far_plane)
            & (opac >= ALPHA_THRESHOLD)
            & torch.isfinite(means2d).all(-1)
        )
        mx, my = means2d[..., 0], means2d[..., 1]
        inside = (
            (mx + radii[..., 0] > 0)
            & (mx - radii[..., 0] < width)
            & (my + radii[..., 1] > 0)
            & (my - radii[..., 1] < height)
        )
        keep = valid & inside & (radii > 0).all(-1)
        radii = torch.where(keep[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return radii, means2d, depths, conics


def tile_pairs(
    means2d: Tensor,  # [G, 2] depth-sorted
    radii: Tensor,  # [G, 2]
    width: int,
    height: int,
    tile_size: int,
) -> tuple[Tensor, Tensor]:
    """(tile id, Gaussian index) of every tile each Gaussian's box touches, by tile then depth."""
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    m, r = means2d.detach(), radii.to(means2d.dtype)
    x0 = torch.floor((m[:, 0] - r[:, 0]) / tile_size).clamp(0, tiles_x).long()
    x1 = torch.ceil((m[:, 0] + r[:, 0]) / tile_size).clamp(0, tiles_x).long()
    y0 = torch.floor((m[:, 1] - r[:, 1]) / tile_size).clamp(0, tiles_y).long()
    y1 = torch.ceil((m[:, 1] + r[:, 1]) / tile_size).clamp(0, tiles_y).long()
    span_x = (x1 - x0).clamp_min(0)
    counts = span_x * (y1 - y0).clamp_min(0)
    gauss = torch.repeat_interleave(torch.arange(len(counts)), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(gauss)) - starts[gauss]
    tx = x0[gauss] + local % span_x[gauss]
    ty = y0[gauss] + local // span_x[gauss]
    tile = ty * tiles_x + tx
    order = torch.sort(tile, stable=True).indices  # Gaussians are already in depth order
    return tile[order], gauss[order]


def composite(
    means2d: Tensor,  # [G, 2] depth-sorted
    conics: Tensor,  # [G, 3]
    colors: Tensor,  # [G, D]
    opacities: Tensor,  # [G]
    radii: Tensor,  # [G, 2]
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted splats: (colour [H, W, D], alpha [H, W, 1]).

    A first pass without autograd finds, for every pixel of every (tile, Gaussian) pair, whether
    the Gaussian contributes (alpha >= 1/255, transmittance not yet exhausted); the differentiable
    pass then evaluates only those (pixel, Gaussian) entries, grouped by pixel in depth order.
    """
    tiles_x = math.ceil(width / tile_size)
    channels = colors.shape[-1]
    tile, gauss = tile_pairs(means2d, radii, width, height, tile_size)
    with torch.no_grad():
        lxy = torch.arange(tile_size * tile_size)
        px = (tile % tiles_x)[:, None] * tile_size + (lxy % tile_size)[None]  # [P, T]
        py = (tile // tiles_x)[:, None] * tile_size + (lxy // tile_size)[None]
        m, con, opa = means2d.detach(), conics.detach(), opacities.detach()
        sigma = _sigma(m[gauss], con[gauss], px, py)
        alpha = (opa[gauss, None] * torch.exp(-sigma)).clamp_max(MAX_ALPHA)
        used = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & (px < width) & (py < height)
        # Pixel-major: nonzero over [T, P] lists each pixel's pairs together, and pairs are
        # sorted by tile then depth, so every pixel's Gaussians come out in depth order.
        local, pair = torch.nonzero(used.T, as_tuple=True)
        log_keep = torch.log1p(-alpha.T[local, pair].double())
        first = _segment_starts(local * len(tile) + tile[pair])
        log_t = _exclusive_segment_cumsum(log_keep, first)
        alive = (log_t + log_keep) > math.log(TRANSMITTANCE_MIN)  # gsplat stops exclusively
        local, pair = local[alive], pair[alive]
        tile_e = tile[pair]
        x = (tile_e % tiles_x) * tile_size + local % tile_size
        y = (tile_e // tiles_x) * tile_size + local // tile_size
        pixel = y * width + x
        first = _segment_starts(local * len(tile) + tile_e)
        g = gauss[pair]
    # One gather of everything a pixel needs from its Gaussians (one scatter in backward).
    features = torch.cat([means2d, conics, opacities[:, None], colors], dim=1).index_select(0, g)
    sigma = _sigma(features[:, 0:2], features[:, 2:5], x, y)
    alpha = (features[:, 5] * torch.exp(-sigma)).clamp_max(MAX_ALPHA)
    log_keep = torch.log1p(-alpha.double())
    weight = alpha * torch.exp(_exclusive_segment_cumsum(log_keep, first)).to(alpha.dtype)
    n_pixels = height * width
    image = colors.new_zeros((n_pixels, channels)).index_add(
        0, pixel, weight[:, None] * features[:, 6:]
    )
    acc = colors.new_zeros(n_pixels).index_add(0, pixel, weight)
    if len(pixel) == 0:  # keep the graph connected so backward still works
        image = image + 0.0 * colors.sum()
    return image.reshape(height, width, channels), acc.reshape(height, width, 1)


def _sigma(
    means2d: Tensor,  # [..., 2]
    conics: Tensor,  # [..., 3]
    px: Tensor,  # [...] or [..., T] integer pixel columns
    py: Tensor,  # [...] or [..., T] integer pixel rows
) -> Tensor:
    """0.5 d^T conic d between each mean and each pixel centre (x + 0.5, y + 0.5)."""
    extra = px.dim() - means2d.dim() + 1  # 1 when pixels carry an extra trailing axis
    mx, my = means2d[..., 0], means2d[..., 1]
    a, b, c = conics.unbind(-1)
    if extra:
        mx, my, a, b, c = (t[..., None] for t in (mx, my, a, b, c))
    dx = mx - (px.to(means2d.dtype) + 0.5)
    dy = my - (py.to(means2d.dtype) + 0.5)
    return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy


def _segment_starts(keys: Tensor) -> Tensor:  # [E] sorted -> [E] bool
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    return first


def _exclusive_segment_cumsum(values: Tensor, first: Tensor) -> Tensor:  # [E], [E] -> [E]
    """Sum of the earlier values of each entry's segment (segments start where ``first``)."""
    if len(values) == 0:
        return values
    exclusive = torch.cumsum(values, 0) - values
    segment = torch.cumsum(first.long(), 0) - 1
    return exclusive - exclusive[first][segment]


def render(
    splats: Splats,
    viewmat: Tensor,  # [4, 4] or [C, 4, 4] world-to-camera
    K: Tensor,  # [3, 3] or [C, 3, 3]  # noqa: N803 - gsplat's name
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor | None = None,  # [3]
    *,
    tile_size: int = 16,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render splats (gsplat's parameter layout) from one or more cameras on the CPU.

    Returns ``(image [H, W, 3], alpha [H, W, 1], info)``, with a leading camera axis when
    ``viewmat`` is batched. ``info`` has gsplat's unpacked ``rasterization`` keys that its
    strategies read: ``means2d`` [C, N, 2] (call ``retain_grad`` on it before backward),
    ``radii`` [C, N, 2], ``depths`` [C, N], ``conics`` [C, N, 3], ``gaussian_ids`` None, ``width``,
    ``height``, ``n_cameras``, ``tile_size`` and ``n_visible`` (Gaussians drawn, per camera).
    """
    batched = viewmat.dim() == 3
    viewmats = viewmat if batched else viewmat[None]
    ks = K if K.dim() == 3 else K[None].expand(len(viewmats), 3, 3)
    means = splats["means"]
    quats = splats["quats"]
    scales = torch.exp(splats["scales"])
    opacities = torch.sigmoid(splats["opacities"])
    coeffs = sh_coefficients(splats)
    radii, means2d, depths, conics = project(
        means,
        quats,
        scales,
        opacities,
        viewmats,
        ks,
        width,
        height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
    )
    campos = torch.linalg.inv(viewmats.detach())[:, :3, 3]  # [C, 3]
    images: list[Tensor] = []
    alphas: list[Tensor] = []
    n_visible: list[int] = []
    n_bases = (sh_degree + 1) ** 2
    for cam in range(len(viewmats)):
        ids = torch.nonzero((radii[cam] > 0).all(-1)).squeeze(1)
        ids = ids[torch.sort(depths[cam, ids].detach(), stable=True).indices]
        n_visible.append(len(ids))
        dirs = means[ids] - campos[cam]
        colors = _spherical_harmonics(sh_degree, dirs, coeffs[ids, :n_bases])
        colors = torch.clamp_min(colors + 0.5, 0.0)
        image, alpha = composite(
            means2d[cam, ids],
            conics[cam, ids],
            colors,
            opacities[ids],
            radii[cam, ids],
            width,
            height,
            tile_size,
        )
        if background is not None:
            image = image + (1.0 - alpha) * background.to(image)
        images.append(image)
        alphas.append(alpha)
    info: dict[str, Any] = {
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "gaussian_ids": None,
        "camera_ids": None,
        "width": width,
        "height": height,
        "n_cameras": len(viewmats),
        "tile_size": tile_size,
        "n_visible": n_visible,
    }
    image_out = torch.stack(images) if batched else images[0]
    alpha_out = torch.stack(alphas) if batched else alphas[0]
    return image_out, alpha_out, info
