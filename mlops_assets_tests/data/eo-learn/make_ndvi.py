"""Write two dates of eo-learn's real Sentinel-2 NDVI time series as georeferenced GeoTIFFs.

Run once from the repository root with the upstream snapshot at hand; the outputs are committed:

    python mlops_assets_tests/data/eo-learn/make_ndvi.py /work/shared/data/eo-learn

The source is ``example_data/TestEOPatch`` of github.com/sentinel-hub/eo-learn (MIT): ``NDVI.npy``
(68 dates x 101 x 100 px, float32) and ``bbox.geojson`` (EPSG:32633, about 10 m pixels). The two
dates are autumn and spring, the second with 19 % of its pixels under cloud per ``CLM.npy``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_bounds

DATES = {4: "2015-09-09", 18: "2016-05-16"}


def main(upstream: Path) -> None:
    """Write ``ndvi_<date>.tif`` next to this script for each of `DATES`."""
    patch = upstream / "example_data" / "TestEOPatch"
    ndvi = np.load(patch / "data" / "NDVI.npy")[..., 0]  # [T, H, W]
    stamps = json.loads((patch / "timestamps.json").read_text())
    ring = json.loads((patch / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    height, width = ndvi.shape[1:]
    transform = from_bounds(min(xs), min(ys), max(xs), max(ys), width, height)
    for index, date in DATES.items():
        assert stamps[index].startswith(date), (index, stamps[index])
        with rasterio.open(
            Path(__file__).parent / f"ndvi_{date}.tif",
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=1,
            dtype="float32",
            crs="EPSG:32633",
            transform=transform,
            compress="deflate",
        ) as dst:
            dst.write(ndvi[index][None].astype(np.float32))
            dst.update_tags(date=date, source="eo-learn TestEOPatch NDVI.npy")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
