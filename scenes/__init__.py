"""Scene files in DL3DV's layout: the one writer (layout.py), COLMAP's binary formats (colmap.py), and the two
generators of the embedded default (synth.py: training and validation scenes; rooms.py: an independent held-out
set). data.py reads every scene, real or generated, through the same `load_scene`."""
