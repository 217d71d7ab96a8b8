"""Panel (d) of the probe figure, drawn from arrays: a query point on a later frame, one layer's attention from it
over an earlier frame with the ground truth marked, and the patch flow of argmax matches with its colour-wheel key.

probe.py computes the arrays from a model (probe.correspondence_figure) and calls `row`; this file imports nothing
of the project but figures/charts.py.
"""

import numpy as np
from PIL import Image, ImageDraw

from figures.charts import FIG_W, FONT, GREY, SMALL


def flow_rgb(dx: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """Displacements (tokens, y down) -> RGB (..., 3): hue = direction, saturation = sqrt(length / scale)."""
    hue = ((np.arctan2(dy, dx) / (2 * np.pi) + 0.5) * 255).astype(np.uint8)
    sat = (255 * np.clip(np.hypot(dx, dy) / scale, 0, 1) ** 0.5).astype(np.uint8)
    hsv = np.stack([hue, sat, np.full_like(hue, 255)], -1)
    return np.array(Image.fromarray(hsv, "HSV").convert("RGB"))


def colour_wheel(scale: float, side: int = 110) -> Image.Image:
    """The flow panel's key: a disc coloured by flow_rgb, the rim = a displacement of `scale` tokens."""
    c = (side - 1) / 2
    yy, xx = np.mgrid[0:side, 0:side] - c  # (side, side), y down as in the image
    rgb = flow_rgb(xx / c * scale, yy / c * scale, scale)
    rgb[np.hypot(xx, yy) > c] = 255
    return Image.fromarray(rgb)


def _ring(img: Image.Image, x: float, y: float, color):
    """A ring of radius 9 px at (x, y); a white rim keeps it visible on any texture."""
    for c, wd in (("white", 6), (color, 3)):
        ImageDraw.Draw(img).ellipse((x - 9, y - 9, x + 9, y + 9), outline=c, width=wd)


def row(later: np.ndarray, earlier: np.ndarray, query, truth, attention: np.ndarray, flow: np.ndarray,
        frame_ids: tuple[int, int], layer: int, name: str = "", color=GREY, width: int = FIG_W) -> Image.Image:
    """(d), one row: the later frame with the query ringed red; the attention over the earlier frame (red on the
    dimmed frame, the true match ringed lime); the patch flow; the flow key.
    later, earlier (Hpx, Wpx, 3) uint8 frames; query (x, y) px on the later frame, truth (x, y) px of the same
    surface point on the earlier one; attention (h, w): the query's attention over the earlier frame's tokens;
    flow (h, w, 2): (dx, dy) in tokens from every later-frame token to its argmax token in the earlier frame;
    frame_ids: (later, earlier) frame numbers of the source video, for the titles; color: the model's legend
    swatch."""
    h, w = attention.shape
    key_w, gap = 170, 12
    side = (width - key_w - 4 * gap) // 3
    sx, sy = side / later.shape[1], side / later.shape[0]  # frame px -> panel px
    fa, fb = frame_ids
    frame_a = Image.fromarray(later).resize((side, side))
    _ring(frame_a, query[0] * sx, query[1] * sy, "red")
    heat = (attention - attention.min()) / max(attention.max() - attention.min(), 1e-12)
    heat_img = Image.fromarray((255 * heat**2).astype(np.uint8)).resize((side, side), Image.NEAREST)  # squared: contrast
    dim = Image.fromarray(earlier).resize((side, side)).convert("L").point(lambda p: p // 3).convert("RGB")
    frame_b = Image.composite(Image.new("RGB", (side, side), (255, 40, 0)), dim, heat_img)
    _ring(frame_b, truth[0] * sx, truth[1] * sy, "lime")
    flow_img = Image.fromarray(flow_rgb(flow[..., 0], flow[..., 1], max(h, w))).resize((side, side), Image.NEAREST)
    img = Image.new("RGB", (width, side + 62), "white")
    d = ImageDraw.Draw(img)
    d.rectangle((8, 7, 30, 19), fill=color)
    d.text((38, 5), f"(d) {name}: native Q-K attention of layer {layer} (its peak PCK@2), frame {fa} -> frame {fb}",
           fill="black", font=FONT)
    titles = [f"query: red ring on frame {fa} (later)", f"attention on frame {fb}; green = truth",
              f"patch flow: frame {fa} -> best match"]
    for j, (im, t) in enumerate(zip((frame_a, frame_b, flow_img), titles)):
        img.paste(im, (gap + j * (side + gap), 44))
        d.text((gap + j * (side + gap), 26), t, fill="black", font=SMALL)
    kx, wy = 3 * (side + gap) + gap, 76  # the flow key's column and its wheel's top
    wheel = colour_wheel(max(h, w), side=96)
    wx, cx, cy = kx + (key_w - wheel.width) // 2, kx + key_w // 2, wy + wheel.height // 2
    img.paste(wheel, (wx, wy))
    d.text((kx, 26), "flow key: hue = direction,", fill="black", font=SMALL)
    d.text((kx, 40), "saturation = length", fill="black", font=SMALL)
    for text, (tx, ty) in (("up", (cx - d.textlength("up", font=SMALL) / 2, wy - 15)),
                           ("down", (cx - d.textlength("down", font=SMALL) / 2, wy + wheel.height + 2)),
                           ("left", (wx - 4 - d.textlength("left", font=SMALL), cy - 7)),
                           ("right", (wx + wheel.width + 4, cy - 7))):
        d.text((tx, ty), text, fill=GREY, font=SMALL)
    d.text((kx, wy + wheel.height + 24), f"rim: {max(h, w)} tokens", fill="black", font=SMALL)
    d.text((kx, wy + wheel.height + 38), "white: no motion", fill="black", font=SMALL)
    return img
