"""Video files: probing and the decode check (PyAV), keyframes (decord, PyAV as fallback), the
backbone's clips and views, and the K keyframes tiled into one image (paper §3.1)."""
