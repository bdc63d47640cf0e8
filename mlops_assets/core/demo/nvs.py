"""Deterministic novel-view-synthesis demo scenes: a textured object seen from posed cameras.

Each scene is an analytic object (a signed distance function) with a procedural texture, lit by a
fixed directional light (so its appearance does not depend on the viewpoint), rendered by sphere
tracing from cameras on two rings around it against a plain background. The COLMAP model holds the
exact cameras and poses, and a sparse point cloud sampled from the visible surface with colours
and tracks (every image in which a point is visible, by a depth test), as structure-from-motion
would produce it. One demo scene is written as a binary COLMAP model and one as text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from mlops_assets.core.scenes.colmap import Camera, ColmapModel, PosedImage, write_model

F32 = NDArray[np.floating[Any]]  # float32 in practice; numpy's stubs widen mixed arithmetic
SDF = Callable[[F32], F32]  # points [..., 3] -> signed distance [...]
Texture = Callable[[F32], F32]  # surface points [..., 3] -> albedo [..., 3] in [0, 1]

BACKGROUND = (1.0, 1.0, 1.0)
_LIGHT = np.array([0.45, -0.35, 0.82], dtype=np.float32) / np.float32(
    np.linalg.norm([0.45, -0.35, 0.82])
)


@dataclass(frozen=True)
class NVSSceneSpec:
    """How to generate one scene."""

    scene_id: str
    shape: Literal["globe", "blocks", "ring"]
    seed: int
    views: int = 24
    image_size: int = 128
    radius: float = 3.2
    focal_factor: float = 1.15  # focal length in units of the image width
    model_format: Literal["bin", "txt"] = "bin"
    max_points: int = 3000


# Shapes and textures -------------------------------------------------------------------------


def _sphere(p: F32, radius: float = 1.0) -> F32:
    return (np.linalg.norm(p, axis=-1) - radius).astype(np.float32)


def _round_box(p: F32, half: tuple[float, float, float], r: float) -> F32:
    q = np.abs(p) - (np.asarray(half, np.float32) - r)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(np.max(q, axis=-1), 0.0)
    return (outside + inside - r).astype(np.float32)


def _torus(p: F32, major: float, minor: float) -> F32:
    q = np.stack([np.linalg.norm(p[..., :2], axis=-1) - major, p[..., 2]], axis=-1)
    return (np.linalg.norm(q, axis=-1) - minor).astype(np.float32)


def _blocks(p: F32) -> F32:
    box = _round_box(p - np.array([0.0, 0.0, -0.35], np.float32), (0.8, 0.8, 0.45), 0.08)
    ball = _sphere(p - np.array([0.0, 0.0, 0.55], np.float32), 0.5)
    return np.minimum(box, ball)


def _ring(p: F32) -> F32:
    return _torus(p, 0.85, 0.32)


def _palette(t: F32, seed: int) -> F32:
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.45, 0.6, 3), rng.uniform(0.3, 0.45, 3)
    c, d = rng.uniform(0.8, 1.2, 3), rng.uniform(0.0, 1.0, 3)
    colour = a + b * np.cos(2 * math.pi * (c * t[..., None] + d))
    return np.clip(colour, 0.02, 0.98).astype(np.float32)


def _globe_texture(seed: int) -> Texture:
    def texture(p: F32) -> F32:
        lon = np.arctan2(p[..., 1], p[..., 0])
        lat = np.arcsin(np.clip(p[..., 2] / np.linalg.norm(p, axis=-1), -1, 1))
        bands = _palette((lat / math.pi + 0.5) * 1.5, seed)
        checker = (np.floor(lon / (math.pi / 6)) + np.floor(lat / (math.pi / 8))) % 2
        return (bands * (0.75 + 0.25 * checker[..., None])).astype(np.float32)

    return texture


def _blocks_texture(seed: int) -> Texture:
    def texture(p: F32) -> F32:
        stripes = 0.5 + 0.5 * np.sin(5.0 * p[..., 0] + 3.0 * p[..., 1])
        base = _palette(0.35 * p[..., 2] + 0.15 * stripes, seed)
        dots = np.sin(9 * p[..., 0]) * np.sin(9 * p[..., 1]) * np.sin(9 * p[..., 2]) > 0.25
        return np.where(dots[..., None], base * 0.55, base).astype(np.float32)

    return texture


def _ring_texture(seed: int) -> Texture:
    def texture(p: F32) -> F32:
        around = np.arctan2(p[..., 1], p[..., 0]) / (2 * math.pi) + 0.5
        tube = np.arctan2(p[..., 2], np.linalg.norm(p[..., :2], axis=-1) - 0.85) / (2 * math.pi)
        base = _palette(around * 2.0, seed)
        return (base * (0.7 + 0.3 * (np.floor(tube * 8) % 2))[..., None]).astype(np.float32)

    return texture


_SHAPES: dict[str, tuple[SDF, Callable[[int], Texture]]] = {
    "globe": (_sphere, _globe_texture),
    "blocks": (_blocks, _blocks_texture),
    "ring": (_ring, _ring_texture),
}


# Cameras and rendering -----------------------------------------------------------------------


def orbit_poses(
    views: int, radius: float, seed: int
) -> list[tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """World-to-camera (R, t) for cameras on two rings, looking at the origin (COLMAP axes)."""
    rng = np.random.default_rng(seed)
    poses: list[tuple[NDArray[np.float64], NDArray[np.float64]]] = []
    rings = (math.radians(18.0), math.radians(42.0))
    for i in range(views):
        elevation = rings[i % 2] + rng.normal(0, math.radians(2.0))
        azimuth = 2 * math.pi * i / views + rng.normal(0, math.radians(2.0))
        eye = radius * np.array(
            [
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation),
            ]
        )
        forward = -eye / np.linalg.norm(eye)  # camera +z
        right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
        right /= np.linalg.norm(right)  # camera +x
        down = np.cross(forward, right)  # camera +y (image rows grow downwards)
        rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
        poses.append((rotation, -rotation @ eye))
    return poses


def _trace(
    sdf: SDF, origin: NDArray[np.float64], dirs: F32, steps: int = 96
) -> tuple[F32, NDArray[np.bool_]]:
    depth = np.zeros(dirs.shape[0], np.float32)
    hit = np.zeros(dirs.shape[0], bool)
    active = np.ones(dirs.shape[0], bool)
    o = origin.astype(np.float32)
    for _ in range(steps):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        d = sdf(o + dirs[idx] * depth[idx, None])
        depth[idx] += d
        done = d < 1e-4
        hit[idx[done]] = True
        escaped = depth[idx] > 10.0
        active[idx[done | escaped]] = False
    return depth, hit


def _normals(sdf: SDF, p: F32) -> F32:
    eps = np.float32(1e-3)
    grads = []
    for axis in range(3):
        offset = np.zeros(3, np.float32)
        offset[axis] = eps
        grads.append(sdf(p + offset) - sdf(p - offset))
    n = np.stack(grads, axis=-1)
    return (n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-8)).astype(np.float32)


@dataclass
class _View:
    image: NDArray[np.uint8]  # [H, W, 3]
    depth: F32  # [H, W], inf where the background shows
    points: F32  # [M, 3] surface points of the hit pixels
    colours: F32  # [M, 3]


def _render_view(
    sdf: SDF,
    texture: Texture,
    rotation: NDArray[np.float64],
    translation: NDArray[np.float64],
    size: int,
    focal: float,
) -> _View:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    cam_dirs = np.stack([(xs - c) / focal, (ys - c) / focal, np.ones_like(xs)], axis=-1).reshape(
        -1, 3
    )
    cam_dirs /= np.linalg.norm(cam_dirs, axis=-1, keepdims=True)
    world_dirs = cam_dirs @ rotation.astype(np.float32)  # R^T applied to each row
    eye = -rotation.T @ translation
    depth, hit = _trace(sdf, eye, world_dirs)
    points = (eye.astype(np.float32) + world_dirs * depth[:, None])[hit]
    normals = _normals(sdf, points)
    shade = 0.35 + 0.65 * np.clip(normals @ _LIGHT, 0.0, 1.0)
    colours = np.clip(texture(points) * shade[:, None], 0.0, 1.0).astype(np.float32)
    image = np.tile(np.asarray(BACKGROUND, np.float32), (size * size, 1))
    image[hit] = colours
    z = np.full(size * size, np.inf, np.float32)
    z[hit] = depth[hit] * cam_dirs[hit, 2]  # distance along the optical axis
    return _View(
        image=np.round(image.reshape(size, size, 3) * 255).astype(np.uint8),
        depth=z.reshape(size, size),
        points=points,
        colours=colours,
    )


def write_nvs_scene(spec: NVSSceneSpec, out_dir: Path, image_size: int | None = None) -> Path:
    """Write ``images/`` and ``sparse/0/`` for ``spec`` into ``out_dir``."""
    size = image_size or spec.image_size
    sdf, make_texture = _SHAPES[spec.shape]
    texture = make_texture(spec.seed)
    focal = spec.focal_factor * size
    poses = orbit_poses(spec.views, spec.radius, spec.seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    views: list[_View] = []
    names: list[str] = []
    for i, (rotation, translation) in enumerate(poses):
        view = _render_view(sdf, texture, rotation, translation, size, focal)
        name = f"view_{i:03d}.png"
        Image.fromarray(view.image).save(out_dir / "images" / name)
        views.append(view)
        names.append(name)

    # Sparse points: a voxel-thinned sample of every view's surface points.
    rng = np.random.default_rng(spec.seed)
    all_points = np.concatenate([v.points for v in views])
    all_colours = np.concatenate([v.colours for v in views])
    voxel = np.floor(all_points / 0.04).astype(np.int64)
    _, first = np.unique(voxel, axis=0, return_index=True)
    keep = rng.permutation(first)[: spec.max_points]
    xyz = all_points[keep].astype(np.float64)
    rgb = np.round(all_colours[keep] * 255).astype(np.uint8)

    images = [
        PosedImage(
            image_id=i + 1, name=name, camera_id=1, rotation=rotation, translation=translation
        )
        for i, (name, (rotation, translation)) in enumerate(zip(names, poses, strict=True))
    ]
    # Tracks: a point is observed by a view if it projects inside it at the rendered depth.
    observations: list[list[tuple[int, float, float]]] = [[] for _ in range(len(xyz))]
    for image_index, (view, (rotation, translation)) in enumerate(zip(views, poses, strict=True)):
        cam = xyz @ rotation.T + translation
        # COLMAP puts pixel centres at i + 0.5: the renderer's pixel i is the point i + 0.5 here.
        u = focal * cam[:, 0] / cam[:, 2] + size / 2
        v = focal * cam[:, 1] / cam[:, 2] + size / 2
        col, row = np.floor(u).astype(int), np.floor(v).astype(int)
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (cam[:, 2] > 0)
        visible = np.zeros(len(xyz), bool)
        visible[inside] = np.abs(view.depth[row[inside], col[inside]] - cam[inside, 2]) < 0.03
        for point_index in np.flatnonzero(visible):
            observations[point_index].append(
                (image_index + 1, float(u[point_index]), float(v[point_index]))
            )
    # The renderer's ray through pixel i passes through (i - (size - 1) / 2) / focal, which in
    # COLMAP's convention (pixel centres at i + 0.5) is a principal point at size / 2.
    centre = size / 2
    camera = Camera(1, "PINHOLE", size, size, (focal, focal, centre, centre))
    model = ColmapModel({1: camera}, images, xyz, rgb, observations)
    write_model(model, out_dir / "sparse" / "0", spec.model_format)
    return out_dir


#: The demo scenes: three objects; one model in binary COLMAP format, two in text.
DEMO_NVS_SCENES: tuple[NVSSceneSpec, ...] = (
    NVSSceneSpec(scene_id="globe", shape="globe", seed=5, model_format="bin"),
    NVSSceneSpec(scene_id="toy-blocks", shape="blocks", seed=7, model_format="txt"),
    NVSSceneSpec(scene_id="ring", shape="ring", seed=9, model_format="txt"),
)
