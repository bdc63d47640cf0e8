"""Op jobs that are not asset materialisations: write-audit-publish ingestion from the UI."""

from mlops_assets.jobs.ingest import IngestConfig, ingest_scene_job

__all__ = ["IngestConfig", "ingest_scene_job"]
