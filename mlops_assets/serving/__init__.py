"""Serving the champion: a scoring server that follows a registry alias (``cd-serving``)."""
