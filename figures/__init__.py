"""Figures drawn with pillow from arrays: each file draws one figure and never imports the top-level modules
(data.py, probe.py, ...), which load what it draws and pass it in."""
