"""Importing the change-detection datasets people already have: LEVIR-CD, LEVIR-CD+ and OSCD.

``mlops-assets import FORMAT ROOT`` turns a downloaded dataset folder into scenes of the store in
one commit (`mlops_assets.core.importers.base`); each module documents the layout it reads.
"""

from __future__ import annotations

from mlops_assets.core.importers.base import DatasetFormat, DatasetImportError
from mlops_assets.core.importers.levir import LevirCD, LevirCDPlus
from mlops_assets.core.importers.oscd import OSCD

#: The formats ``mlops-assets import`` reads, by the name typed on the command line.
FORMATS: dict[str, type[DatasetFormat]] = {
    LevirCD.name: LevirCD,
    LevirCDPlus.name: LevirCDPlus,
    OSCD.name: OSCD,
}


def dataset_format(name: str) -> DatasetFormat:
    """The importer for ``name``; raise `DatasetImportError` listing the known ones."""
    if name not in FORMATS:
        raise DatasetImportError(f"unknown dataset format {name!r}: choose {', '.join(FORMATS)}")
    return FORMATS[name]()
