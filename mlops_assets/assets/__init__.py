"""Dagster assets, grouped by model family."""
