"""Frames as RGB arrays: one image file (any PIL mode, 16-bit grey scaled), a video file or a folder of frames.

The one place that decodes pictures for training scenes (data.py), instruction videos and the benchmarks
(benchmarks/media.py), so that a 16-bit PNG reads the same everywhere and a file that cannot be decoded is
named. PIL's decompression-bomb guard stays on: an image over `Image.MAX_IMAGE_PIXELS` is refused, by name.

Run: no entry point; tests are `python -m pytest tests/test_data.py tests/test_eval.py -q`.
References: PIL image modes (pillow.readthedocs.io/en/stable/handbook/concepts.html#modes); PyAV (pyav.org).
"""
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image


class FrameError(ValueError):
    """An image or frame that cannot be decoded; the message names the file and why."""


def to_rgb(im):
    """A PIL image (any mode) -> uint8 (H, W, 3). 16-bit grey (PIL mode I;16, or I from a PNG) is scaled by
    1/257 first: PIL's convert("RGB") clips it at 255, which gives a white frame."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        im = Image.fromarray((np.asarray(im, np.float64) / 257).round().astype(np.uint8))
    return np.asarray(im.convert("RGB"))


def open_image(src, name: str) -> Image.Image:
    """A file path or encoded bytes -> the PIL image, header read only (size and mode known, pixels not decoded).
    FrameError naming `name` for bytes that are no image or an image over PIL's pixel limit."""
    try:
        return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    except Image.DecompressionBombError as e:  # raised from the header, before any pixel is decoded
        raise FrameError(f"{name}: {e}; an image this large is refused (a decompression bomb guard): downscale "
                         "it if it is genuine") from None
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise FrameError(f"{name}: not a readable image ({e}); replace it with an intact copy (download it "
                         "again)") from None


def read_rgb(src, name: str) -> np.ndarray:
    """A file path or encoded bytes -> uint8 (H, W, 3) by `to_rgb`; FrameError naming `name` for a truncated
    or corrupt file."""
    im = open_image(src, name)
    try:
        with im:
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # "image file is truncated (120 bytes not processed)"
        raise FrameError(f"{name}: cannot decode ({e}); the file is truncated or corrupt: replace it with an "
                         "intact copy (download or extract it again)") from None


def read_clip(path, num_frames):
    """num_frames frames at np.linspace(0, n-1, num_frames, dtype=int) of a video file or a folder of
    images (natural sort: frame_2 before frame_10) -> list of (H, W, 3) uint8. Video files need PyAV
    (optional dependency: pip install av); only the frames up to the last one asked for are decoded."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                       key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
        if not files:
            raise FileNotFoundError(f"{path}: frame folder holds no .jpg/.png images")
        return [read_rgb(files[i], str(files[i])) for i in np.linspace(0, len(files) - 1, num_frames, dtype=int)]
    try:
        import av
    except ImportError:
        raise ImportError(f"decoding {path} needs the optional package av: pip install av "
                          f"(or extract its frames into a folder of images)") from None
    try:
        with av.open(str(path)) as c:
            total = c.streams.video[0].frames or sum(p.size > 0 for p in c.demux(video=0))
        idx = np.linspace(0, total - 1, num_frames, dtype=int).tolist()
        got = {}
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in idx:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= idx[-1]:
                    break
    except (av.error.FFmpegError, IndexError) as e:  # IndexError: a file without a video stream
        raise FrameError(f"{path}: cannot decode the video ({e}); the file is truncated, corrupt or holds no "
                         "video: replace it with an intact copy (download it again)") from None
    if len(got) < len(set(idx)):
        raise ValueError(f"{path}: the header says {total} frames but fewer decode; re-encode the video")
    return [got[i] for i in idx]
