"""The pure core: versioned storage, scenes and models. Nothing here imports Dagster."""
