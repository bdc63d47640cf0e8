"""Change detection: alignment, tiling, training and inference (no Dagster here)."""
