"""Correspondence pictures drawn from arrays: query points on a later frame, one layer's attention from them over an
earlier frame with a match marked, and the patch flow of argmax matches with its colour-wheel key.

Two figures share these tiles (`attention_tile`, `flow_tile`, `flow_key`):
  * `row`: panel (d) of the probe figure, one query and its ground-truth match (probe.correspondence_figure);
  * `video_block`: any video without ground truth (probe.py --video), the paper's visualisation panels (a)/(b):
    the query points on the last frame, their attention over every earlier frame with each argmax ringed, and the
    patch flow from the last frame to every earlier one.
probe.py computes the arrays from a model; this file imports nothing of the project but figures/charts.py.
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


HEAT = (255, 40, 0)  # the attention's colour over the dimmed frame
# One colour per query point of a video figure (its ring on the query frame and its argmax ring on earlier ones).
QUERY_COLORS = [(255, 0, 0), (0, 200, 255), (255, 230, 0), (0, 255, 0), (255, 0, 255), (255, 140, 0),
                (140, 90, 255), (255, 255, 255), (0, 120, 60)]


def query_color(j: int) -> tuple:
    return QUERY_COLORS[j % len(QUERY_COLORS)]


def _ring(img: Image.Image, x: float, y: float, color, r: float = 9):
    """A ring of radius r px at (x, y); a white rim keeps it visible on any texture."""
    for c, wd in (("white", max(2, round(r * 2 / 3))), (color, max(1, round(r / 3)))):
        ImageDraw.Draw(img).ellipse((x - r, y - r, x + r, y + r), outline=c, width=wd)


def attention_tile(frame: np.ndarray, side: int, attention: np.ndarray, rings=(), r: float = 9) -> Image.Image:
    """Attention over a frame: the frame dimmed to grey, `attention` (h, w) over its tokens painted HEAT (opacity
    = the min-max normalised attention squared, for contrast), and rings [((x, y) px of `frame`, colour)] on top.
    frame (Hpx, Wpx, 3) uint8, drawn side x side."""
    sx, sy = side / frame.shape[1], side / frame.shape[0]  # frame px -> tile px
    heat = (attention - attention.min()) / max(attention.max() - attention.min(), 1e-12)
    heat_img = Image.fromarray((255 * heat**2).astype(np.uint8)).resize((side, side), Image.NEAREST)
    dim = Image.fromarray(frame).resize((side, side)).convert("L").point(lambda p: p // 3).convert("RGB")
    tile = Image.composite(Image.new("RGB", (side, side), HEAT), dim, heat_img)
    for (x, y), color in rings:
        _ring(tile, x * sx, y * sy, color, r)
    return tile


def flow_tile(flow: np.ndarray, side: int) -> Image.Image:
    """flow (h, w, 2): (dx, dy) in tokens per token, coloured by flow_rgb (rim of the key = max(h, w) tokens)."""
    h, w = flow.shape[:2]
    return Image.fromarray(flow_rgb(flow[..., 0], flow[..., 1], max(h, w))).resize((side, side), Image.NEAREST)


def flow_key(d: ImageDraw.ImageDraw, img: Image.Image, x: int, y: int, rim: str, key_w: int = 170,
             wheel: int = 96):
    """The flow key drawn at (x, y) into img, key_w px wide: its caption, the colour wheel with the four directions
    named, what its rim is (`rim`, e.g. '12 tokens') and what white means. The wheel's colours do not depend on
    the rim's length (flow_rgb's saturation is length / scale)."""
    d.text((x, y), "flow key: hue = direction,", fill="black", font=SMALL)
    d.text((x, y + 14), "saturation = length", fill="black", font=SMALL)
    disc = colour_wheel(1.0, side=wheel)
    wy = y + 50
    wx, cx, cy = x + (key_w - disc.width) // 2, x + key_w // 2, wy + disc.height // 2
    img.paste(disc, (wx, wy))
    for text, (tx, ty) in (("up", (cx - d.textlength("up", font=SMALL) / 2, wy - 15)),
                           ("down", (cx - d.textlength("down", font=SMALL) / 2, wy + disc.height + 2)),
                           ("left", (wx - 4 - d.textlength("left", font=SMALL), cy - 7)),
                           ("right", (wx + disc.width + 4, cy - 7))):
        d.text((tx, ty), text, fill=GREY, font=SMALL)
    d.text((x, wy + disc.height + 24), f"rim: {rim}", fill="black", font=SMALL)
    d.text((x, wy + disc.height + 38), "white: no motion", fill="black", font=SMALL)


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
    fa, fb = frame_ids
    frame_a = Image.fromarray(later).resize((side, side))
    _ring(frame_a, query[0] * side / later.shape[1], query[1] * side / later.shape[0], "red")
    frame_b = attention_tile(earlier, side, attention, [(truth, "lime")])
    img = Image.new("RGB", (width, side + 62), "white")
    d = ImageDraw.Draw(img)
    d.rectangle((8, 7, 30, 19), fill=color)
    d.text((38, 5), f"(d) {name}: native Q-K attention of layer {layer} (its peak PCK@2), frame {fa} -> frame {fb}",
           fill="black", font=FONT)
    titles = [f"query: red ring on frame {fa} (later)", f"attention on frame {fb}; green = truth",
              f"patch flow: frame {fa} -> best match"]
    for j, (im, t) in enumerate(zip((frame_a, frame_b, flow_tile(flow, side)), titles)):
        img.paste(im, (gap + j * (side + gap), 44))
        d.text((gap + j * (side + gap), 26), t, fill="black", font=SMALL)
    flow_key(d, img, 3 * (side + gap) + gap, 26, f"{max(h, w)} tokens", key_w)
    return img


def video_block(frames: list[np.ndarray], points: np.ndarray, attention: np.ndarray, matches: np.ndarray,
                confidence: np.ndarray, flows: np.ndarray, layer: int, name: str = "", color=GREY,
                width: int = FIG_W) -> Image.Image:
    """One model's layer on a video without ground truth (the paper's visualisation panels (a) and (b)), one
    column per frame, time left to right, the last frame (the queries') rightmost:
      top row:    every earlier frame with the queries' attention over it (HEAT: their attention distributions
                  summed) and each query's argmax token ringed in its colour; the last frame with the queries
                  ringed and numbered;
      bottom row: the patch flow from the last frame to each earlier frame (every token of the last frame to its
                  argmax token), and the flow key under the last frame.
    frames: F (Hpx, Wpx, 3) uint8, as the model saw them; points (n, 2) px of the last frame; attention (F-1, h, w);
    matches (F-1, n, 2) px of each query's argmax token centre in each earlier frame; confidence (F-1, n): the
    argmax's attention; flows (F-1, h, w, 2) in tokens; color: the model's legend swatch."""
    F, (h, w) = len(frames), attention.shape[1:]
    gap, top = 10, 26
    side = min((width - (F + 1) * gap) // F, 260)
    r = max(4.0, side / 22)  # ring radius: readable on small tiles, not hiding a token on large ones
    title_h = 30  # two lines of SMALL text above every tile
    img = Image.new("RGB", (width, top + 2 * (title_h + side) + gap + 8), "white")
    d = ImageDraw.Draw(img)
    d.rectangle((8, 7, 30, 19), fill=color)
    d.text((38, 5), f"{name}: layer {layer}, native Q-K attention (heads averaged) of the last frame's query points "
                    "over each earlier frame", fill="black", font=FONT)
    ya, yb = top + title_h, top + 2 * title_h + side + gap  # the two rows' tile tops
    sx, sy = side / frames[-1].shape[1], side / frames[-1].shape[0]
    last = Image.fromarray(frames[-1]).resize((side, side))
    for j, (x, y) in enumerate(points):
        _ring(last, x * sx, y * sy, query_color(j), r)
        ImageDraw.Draw(last).text((x * sx + r + 1, y * sy - r - 2), str(j + 1), fill=query_color(j), font=SMALL,
                                  stroke_width=2, stroke_fill="black")
    for b in range(F):
        x0 = gap + b * (side + gap)
        if b == F - 1:
            img.paste(last, (x0, ya))
            d.text((x0, ya - title_h), f"frame {b}: the queries", fill="black", font=SMALL)
            d.text((x0, ya - title_h + 13), "(numbered rings)", fill=GREY, font=SMALL)
            continue
        rings = [(matches[b, j], query_color(j)) for j in range(len(points))]
        img.paste(attention_tile(frames[b], side, attention[b], rings, r), (x0, ya))
        d.text((x0, ya - title_h), f"frame {b}: attention", fill="black", font=SMALL)
        conf = confidence[b].mean()  # and its multiple of the uniform attention 1 / (h w): 1x, no preference
        d.text((x0, ya - title_h + 13), f"conf {conf:.3f}, {conf * h * w:.1f}x unif.", fill=GREY, font=SMALL)
        img.paste(flow_tile(flows[b], side), (x0, yb))
        d.text((x0, yb - title_h), f"flow {F - 1} -> {b}", fill="black", font=SMALL)
        d.text((x0, yb - title_h + 13), "argmax per token", fill=GREY, font=SMALL)
    kx = gap + (F - 1) * (side + gap)  # the flow key under the queries' frame
    disc = colour_wheel(max(h, w), side=min(side, 110))
    img.paste(disc, (kx + (side - disc.width) // 2, yb))
    d.text((kx, yb - title_h), "flow key: direction", fill="black", font=SMALL)
    d.text((kx, yb - title_h + 13), f"rim {max(h, w)} tokens, white 0", fill=GREY, font=SMALL)
    return img


def video_legend(points_px: np.ndarray, width: int = FIG_W) -> Image.Image:
    """The video figure's key: each query's number and colour with its (x, y) in the video's pixels, and the
    flow colour wheel with the four directions named."""
    rows = -(-len(points_px) // 6)  # six queries a line
    img = Image.new("RGB", (width, max(26 + 18 * rows, 205)), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 4), "query points (x, y in the video's pixels; ringed in the same colour where each one's "
                   "attention peaks):", fill="black", font=SMALL)
    for j, (x, y) in enumerate(points_px):
        px, py = 8 + (j % 6) * 120, 22 + 18 * (j // 6)
        d.rectangle((px, py + 2, px + 12, py + 12), fill=query_color(j), outline="black")
        d.text((px + 18, py), f"{j + 1}: ({x:.0f}, {y:.0f})", fill="black", font=SMALL)
    flow_key(d, img, width - 190, 4, "max(h, w) tokens", 170)
    return img
