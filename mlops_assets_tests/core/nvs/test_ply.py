from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gsplat.exporter import export_splats
from gsplat.utils import save_ply
from plyfile import PlyData

from mlops_assets.core.nvs.ply import (
    PlyError,
    inria_property_names,
    read_inria_ply,
    write_inria_ply,
)


def _splats(n: int = 5, sh_degree: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "means": rand(n, 3),
        "scales": rand(n, 3) - 3.0,
        "quats": rand(n, 4),
        "opacities": rand(n),
        "sh0": rand(n, 1, 3),
        "shN": rand(n, k - 1, 3) * 0.1,
    }


def test_round_trip(tmp_path: Path) -> None:
    splats = _splats()
    path = write_inria_ply(tmp_path / "out" / "splats.ply", splats)
    back = read_inria_ply(path)
    assert set(back) == set(splats)
    for key, value in splats.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    assert [p.name for p in tmp_path.joinpath("out").iterdir()] == ["splats.ply"]  # no temp left


def test_layout_seen_by_plyfile(tmp_path: Path) -> None:
    splats = _splats(n=4, sh_degree=3)
    ply = PlyData.read(str(write_inria_ply(tmp_path / "s.ply", splats)))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    expected = [
        *["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"],
        *(f"f_rest_{i}" for i in range(45)),
        *["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"],
    ]
    assert names == expected == inria_property_names(15)
    assert {p.val_dtype for p in vertex.properties} == {"f4"}
    assert vertex.count == 4
    np.testing.assert_array_equal(vertex["nx"], 0.0)
    # Pre-activation values are stored as they are: log scales, logit opacity, raw quaternions.
    np.testing.assert_array_equal(vertex["scale_1"], splats["scales"][:, 1].numpy())
    np.testing.assert_array_equal(vertex["opacity"], splats["opacities"].numpy())
    np.testing.assert_array_equal(vertex["rot_0"], splats["quats"][:, 0].numpy())


def test_f_rest_is_channel_major(tmp_path: Path) -> None:
    # One Gaussian, degree 1 (3 rest coefficients per channel): value = 10 * channel + coeff.
    sh_n = np.array([[[0.0, 10.0, 20.0], [1.0, 11.0, 21.0], [2.0, 12.0, 22.0]]], np.float32)
    splats = {
        "means": np.zeros((1, 3), np.float32),
        "scales": np.zeros((1, 3), np.float32),
        "quats": np.array([[1.0, 0.0, 0.0, 0.0]], np.float32),
        "opacities": np.zeros(1, np.float32),
        "sh0": np.array([[[0.5, 1.5, 2.5]]], np.float32),
        "shN": sh_n,  # [1, K-1=3, 3]: coefficient-major in memory
    }
    vertex = PlyData.read(str(write_inria_ply(tmp_path / "s.ply", splats)))["vertex"]
    rest = [float(vertex[f"f_rest_{i}"][0]) for i in range(9)]
    assert rest == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0, 21.0, 22.0]  # R coeffs, G, then B
    assert [float(vertex[f"f_dc_{i}"][0]) for i in range(3)] == [0.5, 1.5, 2.5]
    np.testing.assert_array_equal(read_inria_ply(tmp_path / "s.ply")["shN"], sh_n)


def test_same_bytes_as_gsplat_save_ply(tmp_path: Path) -> None:
    splats = _splats(n=7, sh_degree=3)
    ours = write_inria_ply(tmp_path / "ours.ply", splats).read_bytes()
    theirs = tmp_path / "gsplat.ply"
    # gsplat's older exporter writes the INRIA layout with normals; it is deprecated and prints.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        save_ply(torch.nn.ParameterDict(splats), str(theirs))
    assert ours == theirs.read_bytes()


def test_same_values_as_gsplat_export_splats(tmp_path: Path) -> None:
    splats = _splats(n=6, sh_degree=2)
    # export_splats writes the same layout without the (zero) normals.
    theirs = tmp_path / "gsplat.ply"
    export_splats(**splats, format="ply", save_to=str(theirs))
    ours = PlyData.read(str(write_inria_ply(tmp_path / "ours.ply", splats)))["vertex"]
    reference = PlyData.read(str(theirs))["vertex"]
    reference_names = [p.name for p in reference.properties]
    assert [n for n in inria_property_names(8) if n not in ("nx", "ny", "nz")] == reference_names
    for name in reference_names:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)


def test_degree_zero_has_no_rest(tmp_path: Path) -> None:
    splats = _splats(n=3, sh_degree=0)
    vertex = PlyData.read(str(write_inria_ply(tmp_path / "s.ply", splats)))["vertex"]
    assert not any(p.name.startswith("f_rest") for p in vertex.properties)
    assert read_inria_ply(tmp_path / "s.ply")["shN"].shape == (3, 0, 3)


def test_nan_is_refused_and_nothing_written(tmp_path: Path) -> None:
    splats = _splats(n=5)
    splats["scales"][3, 1] = float("nan")
    splats["opacities"][4] = float("inf")
    with pytest.raises(PlyError, match=r"splats\['scales'\] has NaN or infinite values in 1 of 5 "):
        write_inria_ply(tmp_path / "s.ply", splats)
    assert list(tmp_path.iterdir()) == []


def test_bad_shapes_and_keys(tmp_path: Path) -> None:
    splats = _splats(n=5)
    with pytest.raises(PlyError, match=r"lack shN"):
        write_inria_ply(tmp_path / "s.ply", {k: v for k, v in splats.items() if k != "shN"})
    with pytest.raises(PlyError, match=r"splats\['sh0'\] has shape \(5, 3\), expected \(5, 1, 3\)"):
        write_inria_ply(tmp_path / "s.ply", {**splats, "sh0": splats["sh0"][:, 0]})


def test_reading_a_non_splat_ply(tmp_path: Path) -> None:
    path = tmp_path / "points.ply"
    path.write_bytes(
        b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
        b"property float z\nend_header\n0 0 0\n"
    )
    with pytest.raises(PlyError, match="not an INRIA splat PLY, lacks nx, ny, nz, f_dc_0"):
        read_inria_ply(path)
