"""Dagster resources: thin, configurable wrappers around the pure core."""
