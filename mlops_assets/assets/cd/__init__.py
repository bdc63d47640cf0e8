"""Change-detection assets (``cd/...``)."""
