"""The paper's training-data figure: a sample's frames with the anchor frame's tracks as dots (top row) and
their depth maps (bottom row), with a key for the depth colours. `python data.py show` loads a scene, makes the
sample and calls `draw_tracks`; this file only draws arrays.

Colours: one hue per query point (golden-ratio steps, so neighbouring points differ); depth as inverse depth
1/z on a plasma-like ramp, far dark, near bright, no depth black, one scale for every panel.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EPS = 1e-6


def colourise(depth, lo, hi):
    """Depth (H, W) -> uint8 (H, W, 3): inverse depth mapped from lo..hi (1/far..1/near) to dark..bright; 0 -> black."""
    valid = depth > 0
    inv = np.where(valid, 1 / np.where(valid, depth, 1), 0)
    x = np.clip((inv - lo) / (hi - lo + EPS), 0, 1)
    stops = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)
    rgb = np.stack([np.interp(x, np.linspace(0, 1, 5), stops[:, c]) for c in range(3)], -1)
    return np.where(valid[..., None], rgb, 0).astype(np.uint8)


def draw_tracks(out, frames, depths, tracks, visible, frame_index, offsets, sparse_depth=False):
    """Draw C columns and save the PNG to out. frames (C, H, W, 3) uint8; depths (C, H, W) z-depth (0 = none);
    tracks (C, N, 2) px and visible (C, N) bool of the N query points; frame_index (C,) the video frame numbers;
    offsets (C,) frames from the anchor (0 = the anchor). sparse_depth: depth at single keypoint pixels (the
    SfM source), each grown to 3 x 3 for the eye. -> out."""
    C, H, W = frames.shape[:3]
    N = tracks.shape[1]
    hue = (np.arange(N) * 0.618034) % 1  # golden-ratio hues: neighbouring points differ
    colours = (255 * np.clip(np.abs(((hue[:, None] * 6 + [0, 4, 2]) % 6) - 3) - 1, 0, 1)).astype(int)  # HSV, S = V = 1
    pad, top, bar = 8, 22, 44
    canvas = Image.new("RGB", (C * (W + pad) + pad, 2 * (H + pad) + top + bar), "white")
    draw = ImageDraw.Draw(canvas)
    depths = list(depths)
    if sparse_depth:
        depths = [np.max([np.roll(z, (i, j), (0, 1)) for i in (-1, 0, 1) for j in (-1, 0, 1)], 0) for z in depths]
    valid = np.concatenate([z[z > 0] for z in depths])
    lo, hi = np.percentile(1 / valid, [2, 98]) if len(valid) else (0.0, 1.0)  # one colour scale for every panel
    for col, depth in enumerate(depths):
        x = pad + col * (W + pad)
        frame = Image.fromarray(frames[col])
        dots = ImageDraw.Draw(frame)
        for (u, v), colour in zip(tracks[col][visible[col]], colours[visible[col]]):
            dots.ellipse([u - 4.5, v - 4.5, u + 4.5, v + 4.5], fill=tuple(colour), outline="black", width=2)
        canvas.paste(frame, (x, top))
        canvas.paste(Image.fromarray(colourise(depth, lo, hi)), (x, top + H + pad))
        label = f"frame {frame_index[col]}" + (" (anchor)" if offsets[col] == 0 else f"  +{offsets[col]}")
        draw.text((x, 5), label + f"  {visible[col].sum()}/{N} visible", fill="black")
    # Depth key under the depth row: the colour ramp from far (left) to near (right), with its values.
    y0, x0, x1 = top + 2 * (H + pad), pad, canvas.width - pad
    ramp = np.linspace(lo, hi, x1 - x0)[None].repeat(12, 0)  # inverse depth along x
    canvas.paste(Image.fromarray(colourise(1 / ramp, lo, hi)), (x0, y0))
    for t in np.linspace(0, 1, 5):
        xt = x0 + t * (x1 - x0 - 1)
        draw.line((xt, y0 + 12, xt, y0 + 16), fill="black")
        draw.text((min(xt, x1 - 40), y0 + 17), f"{1 / (lo + t * (hi - lo)):.2f}", fill="black")
    draw.text((x0 + (x1 - x0) // 2 - 170, y0 + 30), "depth z in pose units (colour = 1/z: far dark, near bright, "
              "black = no depth)", fill="black")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
