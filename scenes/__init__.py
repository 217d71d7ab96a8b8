"""Scene files in DL3DV's layout: the one writer (layout.py), COLMAP's binary formats (colmap.py), the two
generators of the embedded default (synth.py: training and validation scenes; rooms.py: an independent held-out
set) and the one frame decoder (frames.py: image files, videos, frame folders; 16-bit grey scaled). data.py reads
every scene, real or generated, through the same `load_scene`."""
