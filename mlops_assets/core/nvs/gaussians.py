"""3D Gaussian parameters in gsplat's layout, initialised from a COLMAP sparse point cloud.

The parameters are a `torch.nn.ParameterDict` with exactly the keys and layouts of gsplat's
``examples/simple_trainer.py`` (pre-activation values):

- ``means``      [N, 3]        positions in the COLMAP world frame (no normalisation is applied)
- ``scales``     [N, 3]        log of the standard deviations along the three axes
- ``quats``      [N, 4]        rotations, wxyz, not normalised
- ``opacities``  [N]           logit of the opacity
- ``sh0``        [N, 1, 3]     degree-0 spherical-harmonics coefficients
- ``shN``        [N, K - 1, 3] higher-degree coefficients, K = (sh_degree + 1) ** 2

so ``{k: v.detach().cpu().numpy() for k, v in splats.items()}`` is what an INRIA .ply writer takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

#: The degree-0 spherical-harmonics basis constant, 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814

#: The keys of a splat parameter dict, in gsplat's order.
SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")

#: Splat parameters: a `torch.nn.ParameterDict` or any mapping of the keys above to tensors.
Splats: TypeAlias = Mapping[str, Tensor] | torch.nn.ParameterDict


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Degree-0 SH coefficients whose rendered colour (``SH_C0 * c + 0.5``) is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    """The colour a degree-0 SH coefficient renders as."""
    return sh * SH_C0 + 0.5


def num_sh_bases(sh_degree: int) -> int:
    """K = (sh_degree + 1) ** 2 coefficients per colour channel."""
    return (sh_degree + 1) ** 2


def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:  # [N, 3] -> [N]
    """Mean distance of each point to its ``k`` nearest other points (chunked, exact)."""
    n = points.shape[0]
    if n < 2:
        return torch.ones(n, dtype=points.dtype)
    k = min(k, n - 1)
    out = torch.empty(n, dtype=points.dtype)
    for start in range(0, n, chunk):
        d = torch.cdist(points[start : start + chunk], points)  # [B, N]
        nearest = d.topk(k + 1, dim=1, largest=False).values[:, 1:]  # drop the point itself
        out[start : start + chunk] = nearest.mean(dim=1)
    return out


@dataclass(frozen=True)
class SceneFrame:
    """Where the scene is: the centre of the cameras and their extent (gsplat's scene_scale)."""

    center: NDArray[np.float64]  # [3]
    scale: float


def scene_frame(camera_centers: NDArray[np.float64]) -> SceneFrame:  # [C, 3]
    """simple_trainer's scene scale: 1.1 x the largest camera distance from their mean."""
    center = camera_centers.mean(axis=0)
    extent = float(np.linalg.norm(camera_centers - center, axis=1).max()) if len(center) else 0.0
    return SceneFrame(center=center, scale=max(extent * 1.1, 1e-6))


def init_splats(
    points: NDArray[np.floating],  # [N, 3]
    colours: NDArray[np.integer] | NDArray[np.floating],  # [N, 3], uint8 0..255 or float 0..1
    sh_degree: int,
    *,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
    seed: int = 0,
) -> torch.nn.ParameterDict:
    """Gaussians at the sparse points, as simple_trainer's ``create_splats_with_optimizers``.

    Colours go to ``sh0`` through `rgb_to_sh`; scales are the log of the mean distance to the
    three nearest neighbours (times ``init_scale``); quaternions are random (seeded); opacities
    are ``logit(init_opacity)``; ``shN`` starts at zero.
    """
    if len(points) == 0:
        raise ValueError("cannot initialise Gaussians: the sparse model has no 3D points")
    generator = torch.Generator().manual_seed(seed)
    means = torch.as_tensor(np.asarray(points, dtype=np.float32))
    rgb = np.asarray(colours, dtype=np.float32)
    if np.issubdtype(np.asarray(colours).dtype, np.integer):
        rgb = rgb / 255.0
    n = means.shape[0]
    dist = knn_mean_distance(means).clamp_min(1e-7)
    scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)
    quats = torch.rand((n, 4), generator=generator)
    opacities = torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)))
    sh0 = rgb_to_sh(torch.as_tensor(rgb))[:, None, :]
    shn = torch.zeros((n, num_sh_bases(sh_degree) - 1, 3))
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(means),
            "scales": torch.nn.Parameter(scales),
            "quats": torch.nn.Parameter(quats),
            "opacities": torch.nn.Parameter(opacities),
            "sh0": torch.nn.Parameter(sh0),
            "shN": torch.nn.Parameter(shn),
        }
    )


def sh_coefficients(splats: Splats) -> Tensor:  # -> [N, K, 3]
    """``sh0`` and ``shN`` concatenated, as gsplat's ``rasterization`` takes them."""
    return torch.cat([splats["sh0"], splats["shN"]], dim=1)


def to_numpy(splats: Splats) -> dict[str, NDArray[np.float32]]:
    """The parameters as float32 numpy arrays (what the .ply writer takes)."""
    return {k: splats[k].detach().cpu().float().numpy() for k in SPLAT_KEYS}
