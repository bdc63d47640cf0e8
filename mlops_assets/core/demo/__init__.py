"""Deterministic demo scenes: bi-temporal GeoTIFF pairs and posed captures of a textured object."""
