"""Scene layout, validation and ingestion, shared by both stores."""
