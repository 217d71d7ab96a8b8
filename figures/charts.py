"""Bar and line charts in pillow alone (no matplotlib): the palette, the layout constants, the drawing primitives
(dashed lines, hatched bars, clip marks, legend swatches) and `chart`, a generic chart with its legend right of
the plot area, shaded bands and dashed reference lines; `notes` and `stack` compose a figure from them.

Used by probe.py for the probe figure's panels (a)-(c); imports nothing of the project.
"""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT, SMALL = ImageFont.load_default(size=13), ImageFont.load_default(size=11)  # ASCII only (no Greek glyphs)
FIG_W = 1000  # px, every panel
LEGEND_W = 250  # px, the legend column right of each chart's plot area
# One hue per model in every panel; the model's GASP head: the same hue, hatched bars / dashed lines.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207), (188, 189, 34)]
GREY, LIGHT = (90, 90, 90), (225, 225, 225)


def model_color(m: int) -> tuple:
    return PALETTE[m % len(PALETTE)]


def tint(color, keep: float = 0.35) -> tuple:
    """color mixed with white, `keep` of it left."""
    return tuple(int(255 - (255 - c) * keep) for c in color)


def dashed(d: ImageDraw.ImageDraw, p0, p1, color, width: int = 2, dash: int = 6, gap: int = 4):
    (x0, y0), (x1, y1) = p0, p1
    n = math.hypot(x1 - x0, y1 - y0)
    for s in np.arange(0, n, dash + gap):
        e = min(s + dash, n)
        d.line((x0 + (x1 - x0) * s / n, y0 + (y1 - y0) * s / n, x0 + (x1 - x0) * e / n, y0 + (y1 - y0) * e / n),
               fill=color, width=width)


def hatched(d: ImageDraw.ImageDraw, box, color, step: int = 5):
    """A light tint of color crossed by 45° stripes of it, outlined."""
    left, top, right, bottom = box
    d.rectangle(box, fill=tint(color))
    w, h = right - left, bottom - top
    for off in range(-int(h), int(w) + 1, step):  # stripe from (left + off, bottom) up to the right
        t0, t1 = max(0, -off), min(h, w - off)
        if t1 > t0:
            d.line((left + off + t0, bottom - t0, left + off + t1, bottom - t1), fill=color)
    d.rectangle(box, outline=color)


def triangle(d: ImageDraw.ImageDraw, x: float, y: float, up: bool, color):
    """A clip mark: apex at (x, y), pointing up (value above the axis) or down (below)."""
    s = 1 if up else -1
    d.polygon([(x, y), (x - 5, y + 8 * s), (x + 5, y + 8 * s)], fill=color, outline="black")


def vertical_text(img: Image.Image, text: str, x: int, y_mid: int):
    """text rotated 90° (reading upwards), its left edge at x, centred on y_mid."""
    w = int(ImageDraw.Draw(img).textlength(text, font=FONT)) + 4
    label = Image.new("L", (w, 16), 0)
    ImageDraw.Draw(label).text((2, 0), text, fill=255, font=FONT)
    label = label.rotate(90, expand=True)
    img.paste(Image.new("RGB", label.size, "black"), (x, y_mid - label.height // 2), label)


def swatch(d: ImageDraw.ImageDraw, x: int, y: int, color, style: str):
    """Legend key (22 x 12 px) drawn as the series is: bar (solid / hatched) or line (solid / dashed)."""
    if style == "solid bar":
        d.rectangle((x, y, x + 22, y + 12), fill=color)
    elif style == "hatched bar":
        hatched(d, (x, y, x + 22, y + 12), color, step=4)
    elif style == "dashed":
        dashed(d, (x, y + 6), (x + 22, y + 6), color, dash=5, gap=3)
    else:
        d.line((x, y + 6, x + 22, y + 6), fill=color, width=2)
        d.ellipse((x + 8, y + 3, x + 14, y + 9), fill=color)


def chart(series: list[dict], title: str, xlabel: str, ylabel: str, bars: bool = False, ylim=(0.0, 1.0),
          hlines=(), size=(FIG_W, 300)) -> Image.Image:
    """A bar or line chart with its legend outside the plot area (right).
    series: dicts of label, xs, ys, color, style ('solid' | 'hatched' for bars, 'solid' | 'dashed' for lines), and
    optionally band = (lows, highs), shaded under a line; the x values are categories (layers, frame gaps).
    A value that is not finite (NaN: undefined) is left out.
    hlines: (value, label, color) reference lines, dashed.
    Values beyond ylim are drawn at the limit and marked with a triangle and their value."""
    keys = [(s["label"], s["color"], f"{s['style']} bar" if bars else s["style"]) for s in series]
    keys += [(label, color, "dashed") for _, label, color in hlines]
    W, H = size[0], max(size[1], 70 + 18 * len(keys))
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 70, 30, W - LEGEND_W - 20, H - 42
    d.text((8, 6), title, fill="black", font=FONT)
    lo, hi = ylim
    Y = lambda v: y1 - (min(max(v, lo), hi) - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
    step = next(st for st in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0) if (hi - lo) / st <= 8)
    for t in np.arange(math.ceil(lo / step) * step, hi + step / 2, step):  # y grid, ticks, tick labels
        d.line((x0, Y(t), x1, Y(t)), fill=LIGHT)
        d.line((x0 - 4, Y(t), x0, Y(t)), fill="black")
        label = f"{t:.2f}"
        d.text((x0 - 7 - d.textlength(label, font=SMALL), Y(t) - 7), label, fill="black", font=SMALL)
    if lo < 0 < hi:
        d.line((x0, Y(0), x1, Y(0)), fill=(150, 150, 150))
    d.rectangle((x0, y0, x1, y1), outline="black")
    vertical_text(img, ylabel, 6, (y0 + y1) // 2)
    d.text(((x0 + x1 - d.textlength(xlabel, font=FONT)) / 2, H - 20), xlabel, fill="black", font=FONT)
    for k, (label, color, style) in enumerate(keys):  # legend, outside the plot area
        lx, ly = x1 + 16, y0 + 4 + 18 * k
        swatch(d, lx, ly, color, style)
        while d.textlength(label, font=SMALL) > LEGEND_W - 36 and len(label) > 4:
            label = label[:-4] + "..."
        d.text((lx + 28, ly - 1), label, fill="black", font=SMALL)
    xs_all = sorted({x for s in series for x in s["xs"]})
    if not xs_all:
        return img
    slot = (x1 - x0) / len(xs_all)
    X = lambda x: x0 + (xs_all.index(x) + 0.5) * slot  # noqa: E731
    for x in xs_all[:: math.ceil(len(xs_all) / 16)]:
        d.line((X(x), y1, X(x), y1 + 4), fill="black")
        d.text((X(x) - d.textlength(str(x), font=SMALL) / 2, y1 + 6), str(x), fill="black", font=SMALL)

    def reference_lines():  # dashed; where there are several (a chance line per grid), named at their right end
        for value, label, color in hlines:
            dashed(d, (x0, Y(value)), (x1, Y(value)), color, width=2, dash=8, gap=5)
            if len(hlines) == 1:
                continue
            lx = x1 - 4 - d.textlength(label, font=SMALL)
            d.rectangle((lx - 2, Y(value) - 15, x1 - 2, Y(value) - 3), fill="white")
            d.text((lx, Y(value) - 15), label, fill=GREY, font=SMALL)

    for s in series if not bars else ():  # bands first, under every line
        if "band" in s:
            band = [(x, lw, hg) for x, lw, hg in zip(s["xs"], *s["band"]) if np.isfinite(lw) and np.isfinite(hg)]
            d.polygon([(X(x), Y(hg)) for x, _, hg in band] + [(X(x), Y(lw)) for x, lw, _ in reversed(band)],
                      fill=tint(s["color"], 0.18))
    if not bars:
        reference_lines()  # under the lines; over the bars
    clipped = []  # (x px, value, colour)
    for m, s in enumerate(series):
        pts = [(X(x), v) for x, v in zip(s["xs"], s["ys"]) if np.isfinite(v)]
        if bars:
            bw = slot * 0.8 / len(series)
            for xc, v in pts:
                box = (xc - slot * 0.4 + m * bw, min(Y(v), Y(max(lo, 0))), xc - slot * 0.4 + (m + 1) * bw - 1,
                       max(Y(v), Y(max(lo, 0))))
                hatched(d, box, s["color"]) if s["style"] == "hatched" else d.rectangle(box, fill=s["color"])
                clipped += [(xc - slot * 0.4 + (m + 0.5) * bw, v, s["color"])] if not lo <= v <= hi else []
        else:
            xy = [(xc, Y(v)) for xc, v in pts]
            for p, q in zip(xy, xy[1:]):
                dashed(d, p, q, s["color"]) if s["style"] == "dashed" else d.line((p, q), fill=s["color"], width=2)
            for (xc, v), (_, yv) in zip(pts, xy):
                d.ellipse((xc - 3, yv - 3, xc + 3, yv + 3), fill=s["color"])
                clipped += [(xc, v, s["color"])] if not lo <= v <= hi else []
    if bars:
        reference_lines()
    for xc, v, color in clipped:  # clip marks last, on top
        up = v > hi
        triangle(d, xc, y0 + 2 if up else y1 - 2, up, color)
        d.text((xc + 7, y0 + 1 if up else y1 - 14), f"{v:.2f}", fill="black", font=SMALL)
    return img


def notes(lines: list[str], width: int = FIG_W) -> Image.Image:
    """A figure's header: lines of text, one under the other."""
    img = Image.new("RGB", (width, 16 * len(lines) + 12), "white")
    for k, line in enumerate(lines):
        ImageDraw.Draw(img).text((8, 6 + 16 * k), line, fill="black", font=FONT)
    return img


def stack(panels: list[Image.Image]) -> Image.Image:
    """Panels one under the other, left-aligned, on white."""
    img = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        img.paste(p, (0, y))
        y += p.height
    return img
