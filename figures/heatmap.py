"""The generalisation figure: a heatmap of each fine-tuned model's change relative to its base model, per benchmark.

Rows = fine-tuned models, columns = benchmarks, cell = tuned - base overall score in points (0-100 scale), in a
diverging scale centred at 0 (blue: gain, red: loss, white: no change; the colour saturates at the largest |change|
of the figure), the value printed in the cell; a cell without a pair is grey with a dash. A colour bar under it.

Used by eval.py's `heatmap` command, which reads the score files and passes the numbers in; imports nothing of the
project but figures/charts.py (fonts, greys).
"""
import math

from PIL import Image, ImageDraw

from figures.charts import FONT, GREY, LIGHT, SMALL

GAIN, LOSS = (33, 102, 172), (178, 24, 43)  # ColorBrewer RdBu ends: readable in grey print and by most colour-blind
CELL_W, CELL_H = 120, 44  # px
LABEL_W, TOP = 220, 64  # px: the row-label column left of the cells, the title and column heads above them


def color(value: float, span: float) -> tuple:
    """White at 0, GAIN at +span, LOSS at -span, linear in between (clipped beyond)."""
    t = max(-1.0, min(1.0, value / span)) if span > 0 else 0.0
    end = GAIN if t > 0 else LOSS
    return tuple(round(255 - (255 - c) * abs(t)) for c in end)


def fit(d: ImageDraw.ImageDraw, text: str, width: float, font=FONT) -> str:
    """text cut with '...' to fit width px."""
    if d.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and d.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def heatmap(rows: list[str], cols: list[str], values: list[list], title: str) -> Image.Image:
    """values[r][c]: the change in points, or None for no pair. Returns the figure (RGB)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0 = LABEL_W, TOP  # cell (r, c) spans x0 + c CELL_W .. +CELL_W, y0 + r CELL_H .. +CELL_H
    W = max(x0 + CELL_W * len(cols) + 30, int(probe.textlength(title, font=FONT)) + 20, 420)
    H = y0 + CELL_H * len(rows) + 90
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), title, fill="black", font=FONT)
    finite = [abs(v) for row in values for v in row if v is not None and math.isfinite(v)]
    span = max(finite + [1e-9])
    for c, name in enumerate(cols):  # column heads, centred over their cells
        name = fit(d, name, CELL_W - 6)
        d.text((x0 + c * CELL_W + (CELL_W - d.textlength(name, font=FONT)) / 2, y0 - 22), name, fill="black",
               font=FONT)
    for r, name in enumerate(rows):
        yc = y0 + r * CELL_H + CELL_H / 2
        d.text((8, yc - 8), fit(d, name, LABEL_W - 16), fill="black", font=FONT)
        for c in range(len(cols)):
            v = values[r][c]
            box = (x0 + c * CELL_W, y0 + r * CELL_H, x0 + (c + 1) * CELL_W - 1, y0 + (r + 1) * CELL_H - 1)
            fill = color(v, span) if v is not None else LIGHT
            d.rectangle(box, fill=fill, outline="white")
            text = f"{v:+.1f}" if v is not None else "-"
            ink = "white" if v is not None and abs(v) > 0.55 * span else ("black" if v is not None else GREY)
            d.text(((box[0] + box[2] - d.textlength(text, font=FONT)) / 2, yc - 8), text, fill=ink, font=FONT)
    # colour bar: -span .. 0 .. +span
    bx0, bx1, by = x0, x0 + max(CELL_W * len(cols), 240), y0 + CELL_H * len(rows) + 24
    for x in range(bx0, bx1):
        d.line((x, by, x, by + 12), fill=color((2 * (x - bx0) / (bx1 - bx0 - 1) - 1) * span, span))
    d.rectangle((bx0, by, bx1 - 1, by + 12), outline=GREY)
    for frac, label in ((0.0, f"{-span:+.1f}"), (0.5, "0"), (1.0, f"{span:+.1f}")):
        x = bx0 + frac * (bx1 - bx0 - 1)
        d.line((x, by + 12, x, by + 16), fill="black")
        d.text((x - d.textlength(label, font=SMALL) / 2, by + 18), label, fill="black", font=SMALL)
    note = "change relative to the base model, in points (tuned - base); blue: gain, red: loss"
    d.text((8, by + 36), fit(d, note, W - 16, SMALL), fill=GREY, font=SMALL)
    return img
