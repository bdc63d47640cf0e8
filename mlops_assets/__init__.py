"""mlops-assets: a Dagster asset graph from versioned imagery to registered, rendered models."""
