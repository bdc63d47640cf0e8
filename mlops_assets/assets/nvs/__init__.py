"""Novel-view-synthesis assets (``nvs/...``)."""
