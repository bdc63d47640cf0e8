"""Novel-view synthesis core: 3D Gaussian Splatting, export and structure-from-motion."""
