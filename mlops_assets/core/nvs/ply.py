"""Gaussian splats as a PLY file in the INRIA 3D Gaussian Splatting layout.

The layout is the one the original 3DGS code writes and viewers such as SuperSplat read: one
``vertex`` element, binary little-endian, every property ``float``, in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1}
    opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

Values are stored before activation (log scales, logit opacities, unnormalised wxyz quaternions,
raw SH coefficients), normals are zero, and ``f_rest`` is channel-major: all the red coefficients,
then green, then blue. The splats are keyed as in gsplat's ``simple_trainer``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from plyfile import PlyData

#: The keys of a splat dictionary, as gsplat's ``simple_trainer`` names its parameters.
SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")

SplatArray = NDArray[np.floating] | torch.Tensor


class PlyError(ValueError):
    """Splats that cannot be written, or a file that is not an INRIA-layout splat PLY."""


def inria_property_names(num_rest_coeffs: int) -> list[str]:
    """The vertex properties, in file order, for ``num_rest_coeffs`` = K-1 SH coefficients."""
    return [
        *("x", "y", "z", "nx", "ny", "nz"),
        *(f"f_dc_{i}" for i in range(3)),
        *(f"f_rest_{i}" for i in range(3 * num_rest_coeffs)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


def _as_numpy(value: SplatArray) -> NDArray[np.float32]:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).numpy()
    return np.asarray(value, dtype=np.float32)


def _checked(splats: Mapping[str, SplatArray]) -> dict[str, NDArray[np.float32]]:
    """The splats as float32 arrays with consistent shapes and finite values."""
    missing = [key for key in SPLAT_KEYS if key not in splats]
    if missing:
        raise PlyError(f"splats lack {', '.join(missing)} (need {', '.join(SPLAT_KEYS)})")
    arrays = {key: _as_numpy(splats[key]) for key in SPLAT_KEYS}
    n = arrays["means"].shape[0] if arrays["means"].ndim else 0
    expected = {
        "means": (n, 3),
        "scales": (n, 3),
        "quats": (n, 4),
        "opacities": (n,),
        "sh0": (n, 1, 3),
    }
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise PlyError(f"splats[{key!r}] has shape {arrays[key].shape}, expected {shape}")
    sh_n = arrays["shN"]
    if sh_n.ndim != 3 or sh_n.shape[0] != n or sh_n.shape[2] != 3:
        raise PlyError(f"splats['shN'] has shape {sh_n.shape}, expected ({n}, K-1, 3)")
    for key, array in arrays.items():
        bad = ~np.isfinite(array.reshape(n, -1)).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise PlyError(
                f"splats[{key!r}] has NaN or infinite values in {int(bad.sum())} of {n} "
                f"Gaussians (first at index {first}); refusing to write them"
            )
    return arrays


def splats_to_vertices(splats: Mapping[str, SplatArray]) -> NDArray[np.void]:
    """The splats as a structured little-endian float32 vertex array in INRIA property order."""
    arrays = _checked(splats)
    n, num_rest = arrays["means"].shape[0], arrays["shN"].shape[1]
    # Channel-major f_rest: [N, K-1, 3] -> [N, 3, K-1] -> [N, 3(K-1)].
    rest = arrays["shN"].transpose(0, 2, 1).reshape(n, 3 * num_rest)
    columns = np.concatenate(
        [
            arrays["means"],
            np.zeros((n, 3), np.float32),
            arrays["sh0"].reshape(n, 3),
            rest,
            arrays["opacities"].reshape(n, 1),
            arrays["scales"],
            arrays["quats"],
        ],
        axis=1,
    )
    names = inria_property_names(num_rest)
    dtype = np.dtype([(name, "<f4") for name in names])
    return np.ascontiguousarray(columns.astype("<f4")).view(dtype).reshape(n)


def write_inria_ply(path: Path, splats: Mapping[str, SplatArray]) -> Path:
    """Write ``splats`` to ``path`` atomically (a temporary file beside it, then a rename).

    ``splats`` maps ``means`` [N, 3], ``scales`` [N, 3] (log), ``quats`` [N, 4] (wxyz),
    ``opacities`` [N] (logit), ``sh0`` [N, 1, 3] and ``shN`` [N, K-1, 3] to arrays or tensors.
    Raises `PlyError` on a missing key, an inconsistent shape, or a NaN / infinite value.
    """
    vertices = splats_to_vertices(splats)
    header = "\n".join(
        [
            "ply",
            "format binary_little_endian 1.0",
            f"element vertex {len(vertices)}",
            *(f"property float {name}" for name in vertices.dtype.names or ()),
            "end_header",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header.encode("ascii") + b"\n")
            out.write(vertices.tobytes())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_inria_ply(path: Path) -> dict[str, NDArray[np.float32]]:
    """Read an INRIA-layout splat PLY back into the splat dictionary `write_inria_ply` takes."""
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except (OSError, ValueError, KeyError) as exc:
        raise PlyError(f"{path}: not a readable PLY with a vertex element ({exc})") from exc
    names: list[str] = [prop.name for prop in vertex.properties]
    num_rest_values = sum(1 for name in names if name.startswith("f_rest_"))
    if num_rest_values % 3:
        raise PlyError(f"{path}: {num_rest_values} f_rest properties, not a multiple of 3")
    num_rest = num_rest_values // 3
    missing = [name for name in inria_property_names(num_rest) if name not in names]
    if missing:
        raise PlyError(f"{path}: not an INRIA splat PLY, lacks {', '.join(missing[:8])}")
    data = vertex.data

    n = len(data)

    def columns(*keys: str) -> NDArray[np.float32]:
        stacked = [np.asarray(data[k], dtype=np.float32) for k in keys]
        return np.stack(stacked, axis=1) if stacked else np.zeros((n, 0), np.float32)

    rest = columns(*(f"f_rest_{i}" for i in range(3 * num_rest))).reshape(n, 3, num_rest)
    return {
        "means": columns("x", "y", "z"),
        "scales": columns("scale_0", "scale_1", "scale_2"),
        "quats": columns("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacities": np.asarray(data["opacity"], dtype=np.float32),
        "sh0": columns("f_dc_0", "f_dc_1", "f_dc_2").reshape(n, 1, 3),
        "shN": np.ascontiguousarray(rest.transpose(0, 2, 1)),
    }
