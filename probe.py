"""The paper's correspondence diagnostic (GASP §4 "Correspondence Analysis").

For every LLM layer: does the layer's own query of a point in a later frame attend to the same
surface point in an earlier frame?

    G8   P = mean_heads softmax_j(q_i · k_j / √d_h)   q from frame a (later), k from frame b (earlier),
         rotary / M-RoPE applied; prediction = argmax_j P, confidence = max_j P
    G9   hit@δ = ||token(pred) - token(gt)||₂ ≤ δ tokens, δ ∈ {1, 2}  (paper: PCK@2patch)
         chance = mean over gt tokens of |{tokens within δ of gt}| / (h·w)  (a uniformly random prediction)
    G10  ρ_l = Pearson(confidence, hit@2) per layer;  Y(Δt) = PCK(Δt) / PCK(1), Δt in original frames

With a training checkpoint of a GASP objective (corr, full) the same metrics also run on the heads'
embeddings: P = softmax_j(e_q,i · e_k,j / τ) with the run's own τ.

--model takes a stock model (HF id or folder; train.py's export/ is one) or a training checkpoint
(checkpoint.pt, or the run folder holding it) of any objective, LoRA or not: model.load rebuilds
it with the run's own settings (base model, layers, r, τ, LoRA rank, frame size).

Run:
    python probe.py                                              # the embedded tiny model, synthetic val scenes
    python probe.py --model Qwen/Qwen2.5-VL-7B-Instruct --scenes /data/dl3dv_val --limit 200 --out runs/probe
    python probe.py --model runs/tiny-qwen2_5_vl --model runs/vqa/checkpoint.pt --model runs/gasp \\
        --model runs/gasp/export --out runs/compare               # side by side: stock, baseline, GASP, export
    python probe.py --model runs/gasp --no-rotary --out runs/prerope   # diagnostic: q/k before M-RoPE
    python probe.py --model runs/gasp --sharpen 16 --out runs/sharp    # diagnostic: the same q/k, logits x16
Outputs probe.json (every number, settings, model and data), probe.png (panels a-d) and a printed table.
References: GASP arXiv 2605.30231; DiffTrack (arXiv 2506.17220) for Q-K matching and confidence.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import data
import model as M
from scenes import synth

# Notation: F frames, T = h*w tokens per frame, H heads, d head size, N tracks, L layers, r embedding size.

DTYPES = ("bfloat16", "float16", "float32")
ATTN = ("sdpa", "eager", "flash_attention_2")


def match(q: torch.Tensor, k: torch.Tensor, sample: dict, token_px: int, grid, scale: float) -> dict:
    """G8-G9 for one layer and one sample, every pair a > b (later frame queries the earlier one).
    q, k (F, T, H, d). Returns flat arrays over valid (pair, track): hit1, hit2, conf, gap.
    Assumption: the softmax runs over the earlier frame's tokens only (not the whole causal context), heads
    are pooled by averaging their distributions, and a track's query is the q of the token holding it in
    the later frame; the paper gives PCK@2patch and the confidence, not these details."""
    h, w = grid
    tracks = torch.as_tensor(sample["tracks"]).float()  # (F, N, 2)
    visible = torch.as_tensor(sample["visible"])
    fidx = torch.as_tensor(sample["frame_index"])
    tok = (tracks / token_px).floor().long()  # (F, N, 2) token (x, y) of every track
    tok[..., 0].clamp_(0, w - 1)
    tok[..., 1].clamp_(0, h - 1)
    out = {key: [] for key in ("hit1", "hit2", "conf", "gap")}
    for a in range(1, q.shape[0]):
        ok = visible[a][None] & visible[:a]  # (a, N): visible in both
        if not ok.any():
            continue
        qtok, inv = torch.unique(tok[a, :, 1] * w + tok[a, :, 0], return_inverse=True)  # tracks share tokens
        P = torch.softmax(torch.einsum("nhd,bthd->bhnt", q[a, qtok], k[:a]) * scale, -1).mean(1)  # (a, n, T)
        conf, pred = P.max(-1)
        conf, pred = conf[:, inv], pred[:, inv]  # (a, N): back to one entry per track
        pred_xy = torch.stack([pred % w, pred // w], -1)
        dist = (pred_xy - tok[:a]).float().norm(dim=-1)  # (a, N) in tokens
        gap = (fidx[a] - fidx[:a])[:, None].expand_as(dist)
        for key, val in (("hit1", dist <= 1), ("hit2", dist <= 2), ("conf", conf), ("gap", gap)):
            out[key].append(val[ok])
    return {key: torch.cat(v).numpy() if v else np.zeros(0) for key, v in out.items()}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """G10: Pearson correlation; 0 when either side is constant."""
    x, y = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def temporal(hit: np.ndarray, gap: np.ndarray) -> dict:
    """G10: Y(Δt) = PCK(Δt) / PCK(Δt = smallest gap present), for every gap present."""
    gaps = np.unique(gap)
    pck = {int(g): float(hit[gap == g].mean()) for g in gaps}
    base = pck[int(gaps[0])] if len(gaps) else 0.0
    return {g: (v / base if base > 0 else 0.0) for g, v in pck.items()}


def summarize(records: list[list[dict]]) -> dict:
    """Per-layer PCK@1, PCK@2, ρ and Y(Δt) from records[layer] = one `match` dict per sample, pooled over samples;
    also ρ per sample (sequence) as its mean and std over the rho_seq_n samples that have one, the paper's shaded
    bands."""
    res = {"pck1": [], "pck2": [], "rho": [], "rho_seq_mean": [], "rho_seq_std": [], "rho_seq_n": [],
           "temporal": [], "n": []}
    for per_sample in records:
        rec = {key: np.concatenate([r[key] for r in per_sample]) for key in per_sample[0]}
        hit2 = rec["hit2"].astype(float)
        res["pck1"].append(float(rec["hit1"].mean()) if len(hit2) else 0.0)
        res["pck2"].append(float(hit2.mean()) if len(hit2) else 0.0)
        res["rho"].append(pearson(rec["conf"], hit2) if len(hit2) > 1 else 0.0)
        # a sample whose points are all hits (or all misses, or all equally confident) has no ρ: left out
        seq = [pearson(r["conf"], r["hit2"]) for r in per_sample
               if len(np.unique(r["hit2"])) > 1 and len(np.unique(r["conf"])) > 1]
        res["rho_seq_mean"].append(float(np.mean(seq)) if seq else 0.0)
        res["rho_seq_std"].append(float(np.std(seq)) if seq else 0.0)
        res["rho_seq_n"].append(len(seq))
        res["temporal"].append(temporal(hit2, rec["gap"]))
        res["n"].append(int(len(hit2)))
    peak = int(np.argmax(res["pck2"]))
    res.update(peak_layer=peak, peak_pck2=res["pck2"][peak], avg_pck2=float(np.mean(res["pck2"])))
    return res


def chance_pck(grid, delta: float = 2.0) -> float:
    """G9 at chance: the PCK@δ of a prediction drawn uniformly over the frame's h*w tokens, i.e. the mean over
    ground-truth tokens of the fraction of tokens within δ of it (the disc of radius δ, clipped at the border)."""
    h, w = grid
    ys, xs = np.mgrid[0:h, 0:w]
    oy, ox = np.mgrid[-h + 1 : h, -w + 1 : w]  # every offset between two tokens of the grid
    disc = (ox**2 + oy**2 <= delta**2).astype(np.float64)  # (2h-1, 2w-1)
    # tokens within δ of (y, x) = disc entries whose offset lands on the grid; summed over all (y, x) at once:
    # each offset (oy, ox) lands (h - |oy|) * (w - |ox|) times.
    return float((disc * (h - abs(oy)) * (w - abs(ox))).sum() / (h * w) ** 2)


def default_names(paths: list[str]) -> list[str]:
    """Short legend names, unique: the run folder's name ('runs/vqa/checkpoint.pt' and 'runs/vqa' -> 'vqa';
    an export keeps its run, 'runs/vqa/export' -> 'vqa/export'), more of the path where two would clash
    ('a/vqa', 'b/vqa'), and ' #2', ' #3' for the same path given again."""
    parts = []
    for p in paths:
        ps = [s for s in os.path.normpath(p).split(os.sep) if s not in ("", ".")]
        parts.append(ps[:-1] if len(ps) > 1 and ps[-1] == "checkpoint.pt" else ps or [p])
    depth = [2 if len(ps) > 1 and ps[-1] == "export" else 1 for ps in parts]
    while True:
        names = ["/".join(ps[-d:]) for ps, d in zip(parts, depth)]
        grow = [i for i, n in enumerate(names) if depth[i] < len(parts[i])
                and any(names[j] == n and parts[j] != parts[i] for j in range(len(names)))]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        names[i] = n if seen[n] == 1 else f"{n} #{seen[n]}"
    return names


@torch.no_grad()
def run_probe(vlm, proc, samples, gasp=None, tau: float = 0.07, device="cpu", desc="probe",
              rotary: bool = True, sharpen: float = 1.0) -> dict:
    """Native Q-K metrics for every layer (and head metrics with temperature tau when gasp is given), pooled
    over samples, plus the grid and the chance PCK. Diagnostics, not G8: rotary=False reads q and k before the
    rotary embedding; sharpen multiplies the attention's logits (a sharper softmax, the same q and k).
    q/k and embeddings are compared in float32 whatever the model's dtype."""
    n_layers = len(M.llm_layers(vlm))
    native = [[] for _ in range(n_layers)]
    heads = [[] for _ in range(len(gasp.layer_ids))] if gasp is not None else None
    for sample in tqdm(samples, desc=desc, leave=False):
        inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT]).items()}
        tmap = proc.token_map(inputs["input_ids"][0], len(sample["frames"]))

        def on_layer(l, q, k):  # q, k (F, T, H, d) float32
            native[l].append(match(q, k, sample, proc.token_px, proc.grid, sharpen * q.shape[-1] ** -0.5))

        forward = (lambda: gasp.embed(inputs, tmap)) if gasp is not None else None  # heads read in the same pass
        out = M.native_qk(vlm, inputs, tmap, on_layer, forward=forward, rotary=rotary)
        if gasp is not None:
            _, e_q, e_k = out  # (L, F, h, w, r) each
            for j in range(e_q.shape[0]):
                q = e_q[j].flatten(1, 2)[:, :, None].float()  # (F, T, 1, r): one "head"
                k = e_k[j].flatten(1, 2)[:, :, None].float()
                heads[j].append(match(q, k, sample, proc.token_px, proc.grid, 1 / tau))
    out = {"native": summarize(native), "grid": list(proc.grid),
           "chance_pck1": chance_pck(proc.grid, 1), "chance_pck2": chance_pck(proc.grid, 2)}
    if heads is not None:
        out.update(heads=summarize(heads), head_layers=gasp.layer_ids, tau=tau)
    return out


def probe_samples(scenes: str, size, frames: int, limit: int, seed: int = 0) -> list[dict]:
    """Held-out samples with consecutive frames, so frame gaps run 1 .. frames-1."""
    ds = data.SceneDataset(scenes, size=size, num_frames=frames, seed=seed, contiguous=True, length=limit)
    samples = [ds[i] for i in range(len(ds))]
    if not any(s["visible"].sum(0).max() > 1 for s in samples):
        raise ValueError(f"{scenes}: no track is visible in two frames; check depth and poses (python data.py show)")
    return samples


# ----------------------------------------------------------------------------- plots (pillow only)

FONT, SMALL = ImageFont.load_default(size=13), ImageFont.load_default(size=11)  # ASCII only (no Greek glyphs)
FIG_W = 1000  # px, every panel
LEGEND_W = 250  # px, the legend column right of each chart's plot area
# One hue per model in every panel; the model's head: the same hue, hatched bars / dashed lines.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207), (188, 189, 34)]
GREY, LIGHT = (90, 90, 90), (225, 225, 225)


def model_color(m: int) -> tuple:
    return PALETTE[m % len(PALETTE)]


def _tint(color, keep: float = 0.35) -> tuple:
    return tuple(int(255 - (255 - c) * keep) for c in color)


def _dashed(d: ImageDraw.ImageDraw, p0, p1, color, width: int = 2, dash: int = 6, gap: int = 4):
    (x0, y0), (x1, y1) = p0, p1
    n = math.hypot(x1 - x0, y1 - y0)
    for s in np.arange(0, n, dash + gap):
        e = min(s + dash, n)
        d.line((x0 + (x1 - x0) * s / n, y0 + (y1 - y0) * s / n, x0 + (x1 - x0) * e / n, y0 + (y1 - y0) * e / n),
               fill=color, width=width)


def _hatched(d: ImageDraw.ImageDraw, box, color, step: int = 5):
    """A light tint of color crossed by 45° stripes of it, outlined."""
    left, top, right, bottom = box
    d.rectangle(box, fill=_tint(color))
    w, h = right - left, bottom - top
    for off in range(-int(h), int(w) + 1, step):  # stripe from (left + off, bottom) up to the right
        t0, t1 = max(0, -off), min(h, w - off)
        if t1 > t0:
            d.line((left + off + t0, bottom - t0, left + off + t1, bottom - t1), fill=color)
    d.rectangle(box, outline=color)


def _triangle(d: ImageDraw.ImageDraw, x: float, y: float, up: bool, color):
    """A clip mark: apex at (x, y), pointing up (value above the axis) or down (below)."""
    s = 1 if up else -1
    d.polygon([(x, y), (x - 5, y + 8 * s), (x + 5, y + 8 * s)], fill=color, outline="black")


def _vertical_text(img: Image.Image, text: str, x: int, y_mid: int):
    w = int(ImageDraw.Draw(img).textlength(text, font=FONT)) + 4
    label = Image.new("L", (w, 16), 0)
    ImageDraw.Draw(label).text((2, 0), text, fill=255, font=FONT)
    label = label.rotate(90, expand=True)
    img.paste(Image.new("RGB", label.size, "black"), (x, y_mid - label.height // 2), label)


def _swatch(d: ImageDraw.ImageDraw, x: int, y: int, color, style: str):
    """Legend key (22 x 12 px) drawn as the series is: bar (solid / hatched) or line (solid / dashed)."""
    if style == "solid bar":
        d.rectangle((x, y, x + 22, y + 12), fill=color)
    elif style == "hatched bar":
        _hatched(d, (x, y, x + 22, y + 12), color, step=4)
    elif style == "dashed":
        _dashed(d, (x, y + 6), (x + 22, y + 6), color, dash=5, gap=3)
    else:
        d.line((x, y + 6, x + 22, y + 6), fill=color, width=2)
        d.ellipse((x + 8, y + 3, x + 14, y + 9), fill=color)


def chart(series: list[dict], title: str, xlabel: str, ylabel: str, bars: bool = False, ylim=(0.0, 1.0),
          hlines=(), size=(FIG_W, 300)) -> Image.Image:
    """A bar or line chart with its legend outside the plot area (right).
    series: dicts of label, xs, ys, color, style ('solid' | 'hatched' for bars, 'solid' | 'dashed' for lines), and
    optionally band = (lows, highs), shaded under a line; the x values are categories (layers, frame gaps).
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
    _vertical_text(img, ylabel, 6, (y0 + y1) // 2)
    d.text(((x0 + x1 - d.textlength(xlabel, font=FONT)) / 2, H - 20), xlabel, fill="black", font=FONT)
    for k, (label, color, style) in enumerate(keys):  # legend, outside the plot area
        lx, ly = x1 + 16, y0 + 4 + 18 * k
        _swatch(d, lx, ly, color, style)
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
            _dashed(d, (x0, Y(value)), (x1, Y(value)), color, width=2, dash=8, gap=5)
            if len(hlines) == 1:
                continue
            lx = x1 - 4 - d.textlength(label, font=SMALL)
            d.rectangle((lx - 2, Y(value) - 15, x1 - 2, Y(value) - 3), fill="white")
            d.text((lx, Y(value) - 15), label, fill=GREY, font=SMALL)

    for s in series if not bars else ():  # bands first, under every line
        if "band" in s:
            lows, highs = s["band"]
            d.polygon([(X(x), Y(v)) for x, v in zip(s["xs"], highs)] +
                      [(X(x), Y(v)) for x, v in reversed(list(zip(s["xs"], lows)))], fill=_tint(s["color"], 0.18))
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
                _hatched(d, box, s["color"]) if s["style"] == "hatched" else d.rectangle(box, fill=s["color"])
                clipped += [(xc - slot * 0.4 + (m + 0.5) * bw, v, s["color"])] if not lo <= v <= hi else []
        else:
            xy = [(xc, Y(v)) for xc, v in pts]
            for p, q in zip(xy, xy[1:]):
                _dashed(d, p, q, s["color"]) if s["style"] == "dashed" else d.line((p, q), fill=s["color"], width=2)
            for (xc, v), (_, yv) in zip(pts, xy):
                d.ellipse((xc - 3, yv - 3, xc + 3, yv + 3), fill=s["color"])
                clipped += [(xc, v, s["color"])] if not lo <= v <= hi else []
    if bars:
        reference_lines()
    for xc, v, color in clipped:  # clip marks last, on top
        up = v > hi
        _triangle(d, xc, y0 + 2 if up else y1 - 2, up, color)
        d.text((xc + 7, y0 + 1 if up else y1 - 14), f"{v:.2f}", fill="black", font=SMALL)
    return img


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


def correspondence_figure(vlm, proc, sample, layer: int, device="cpu", name: str = "", color=GREY,
                          width: int = FIG_W) -> Image.Image:
    """(d), one row per model. Left: a query point on the last (later) frame; middle: that layer's native Q-K
    attention from it over the first (earlier) frame; right: patch flow, every token of the later frame ->
    its argmax token in the earlier one, with a colour-wheel key."""
    a, b = len(sample["frames"]) - 1, 0
    inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT]).items()}
    tmap = proc.token_map(inputs["input_ids"][0], len(sample["frames"]))
    got = {}
    M.native_qk(vlm, inputs, tmap, lambda l, q, k: got.setdefault("qk", (q, k)), layers=[layer])
    q, k = got["qk"]  # (F, T, H, d) float32
    P = torch.softmax(torch.einsum("thd,shd->hts", q[a], k[b]) / q.shape[-1] ** 0.5, -1).mean(0).cpu()  # (T, T)
    h, w = proc.grid
    vis = np.nonzero(sample["visible"][a] & sample["visible"][b])[0]
    i = vis[len(vis) // 2] if len(vis) else 0
    u, v = sample["tracks"][a, i]
    qi = int(min(v // proc.token_px, h - 1)) * w + int(min(u // proc.token_px, w - 1))
    key_w, gap = 170, 12
    side = (width - key_w - 4 * gap) // 3
    s = side / sample["frames"].shape[2]
    frame_a = Image.fromarray(sample["frames"][a]).resize((side, side))
    for c, wd in (("white", 6), ("red", 3)):  # a white rim keeps the ring visible on any texture
        ImageDraw.Draw(frame_a).ellipse((u * s - 9, v * s - 9, u * s + 9, v * s + 9), outline=c, width=wd)
    heat = P[qi].view(h, w).numpy()
    heat = (255 * ((heat - heat.min()) / max(heat.max() - heat.min(), 1e-12)) ** 2).astype(np.uint8)  # contrast
    heat_img = Image.fromarray(heat).resize((side, side), Image.NEAREST)
    dim = Image.fromarray(sample["frames"][b]).resize((side, side)).convert("L").point(lambda p: p // 3).convert("RGB")
    frame_b = Image.composite(Image.new("RGB", (side, side), (255, 40, 0)), dim, heat_img)  # heat in red, dimmed frame
    gu, gv = sample["tracks"][b, i] * s
    for c, wd in (("white", 6), ("lime", 3)):
        ImageDraw.Draw(frame_b).ellipse((gu - 9, gv - 9, gu + 9, gv + 9), outline=c, width=wd)
    pred, tok = P.argmax(-1).numpy(), np.arange(h * w)
    flow = flow_rgb((pred % w - tok % w).reshape(h, w), (pred // w - tok // w).reshape(h, w), max(h, w))
    flow = Image.fromarray(flow).resize((side, side), Image.NEAREST)
    fa, fb = (int(sample["frame_index"][f]) for f in (a, b))
    img = Image.new("RGB", (width, side + 62), "white")
    d = ImageDraw.Draw(img)
    d.rectangle((8, 7, 30, 19), fill=color)
    d.text((38, 5), f"(d) {name}: native Q-K attention of layer {layer} (its peak PCK@2), frame {fa} -> frame {fb}",
           fill="black", font=FONT)
    titles = [f"query: red ring on frame {fa} (later)", f"attention on frame {fb}; green = truth",
              f"patch flow: frame {fa} -> best match"]
    for j, (im, t) in enumerate(zip((frame_a, frame_b, flow), titles)):
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


def figure(results: dict, extra: list[Image.Image]) -> Image.Image:
    """A header saying what is measured, panels (a) PCK@2 per layer with the chance line, (b) ρ per layer,
    (c) Y(Δt) at the peak layer, one colour per model (its head: the same colour, hatched / dashed); then
    the rows of (d) in `extra`."""
    a, b, c = [], [], []
    for m, (name, res) in enumerate(results.items()):
        color = model_color(m)
        for kind, style_bar, style_line in (("native", "solid", "solid"), ("heads", "hatched", "dashed")):
            if kind not in res:
                continue
            r = res[kind]
            label = f"{name}: {'native Q-K' if kind == 'native' else 'GASP head'}"
            layers = list(range(len(r["pck2"]))) if kind == "native" else res["head_layers"]
            a.append(dict(label=label, xs=layers, ys=r["pck2"], color=color, style=style_bar))
            band = {}
            if "rho_seq_mean" in r:  # probe.json files written before the per-sequence rho have no band
                mean, std = np.array(r["rho_seq_mean"]), np.array(r["rho_seq_std"])
                band = dict(band=(list(mean - std), list(mean + std)))
            b.append(dict(label=label, xs=layers, ys=r["rho"], color=color, style=style_line, **band))
            t = {int(g): y for g, y in r["temporal"][r["peak_layer"]].items()}  # json turns keys into strings
            c.append(dict(label=f"{label}, layer {layers[r['peak_layer']]}", xs=sorted(t),
                          ys=[t[g] for g in sorted(t)], color=color, style=style_line))
    grids = {tuple(res["grid"]): res["chance_pck2"] for res in results.values() if "chance_pck2" in res}
    chance = [(v, f"chance {v:.3f} ({g[0]}x{g[1]} grid)" if len(grids) > 1 else f"chance {v:.3f} (a random token)",
               GREY) for g, v in grids.items()]
    panels = [chart(a, "(a) PCK@2: share of tracks whose best-attended earlier-frame token is within 2 tokens "
                       "of the truth", "LLM layer", "PCK@2", bars=True, hlines=chance),
              chart(b, "(b) rho: Pearson of match confidence (max attention) and hit@2; line: all tracks, band: "
                       "per-sample mean +- std",
                    "LLM layer", "rho", ylim=(-1.0, 1.0)),
              chart(c, "(c) temporal robustness Y(dt) = PCK@2(dt) / PCK@2(smallest gap), at each one's peak layer",
                    "frame gap dt (frames of the source video)", "Y(dt)", ylim=(0.0, 1.5),
                    hlines=[(1.0, "Y = 1: no decay with distance", LIGHT)])] + extra
    first = next(iter(results.values()), {})
    notes = ["Correspondence probe: for every LLM layer, does a token of a later frame attend to the same surface "
             "point in an earlier frame?",
             "native Q-K: the layer's own attention, softmax(q.k / sqrt(d)) averaged over heads, rotary applied. "
             "GASP head: softmax(e_q.e_k / tau) of",
             "the trained head's embeddings (hatched bars, dashed lines). One colour per model in every panel."]
    diagnostic = [text for key, off, text in (("rotary", True, "q and k read BEFORE the rotary embedding"),
                                              ("sharpen", 1.0, f"logits multiplied by {first.get('sharpen')}"))
                  if first.get(key, off) != off]
    if diagnostic:  # not G8: say so on the figure itself
        notes.append("DIAGNOSTIC, not the paper's probe: native Q-K " + "; ".join(diagnostic) + ".")
    if "samples" in first:
        notes.append(f"Data: {first['samples']} samples of {first['frames']} consecutive frames from "
                     f"{first['scenes']}; every later frame queries every earlier one.")
    header = Image.new("RGB", (FIG_W, 16 * len(notes) + 12), "white")
    for k, line in enumerate(notes):
        ImageDraw.Draw(header).text((8, 6 + 16 * k), line, fill="black", font=FONT)
    panels = [header] + panels
    img = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        img.paste(p, (0, y))
        y += p.height
    return img


def table(results: dict) -> str:
    """PCK@2 per layer of native Q-K (and heads) for each model as plain text, with mean, peak and chance."""
    names = list(results)
    cw = [max(20, len(n) + 2) for n in names]  # one column block per model: Q-K, head
    n_layers = max(len(r["native"]["pck2"]) for r in results.values())

    def row(label, cells):
        return f"{label:>6} " + "".join(f"{qk:>{c - 10}}{hd:>10}" for (qk, hd), c in zip(cells, cw))

    def head_at(r, l):
        return r["heads"]["pck2"][r["head_layers"].index(l)] if "heads" in r and l in r["head_layers"] else None

    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["PCK@2 per LLM layer (Q-K: the layer's own attention; head: its GASP head; -: none)",
             f"{'':>6} " + "".join(f"{n:>{c}}" for n, c in zip(names, cw)),
             row("layer", [("Q-K", "head")] * len(names))]
    for l in range(n_layers):
        lines.append(row(str(l), [(fmt(r["native"]["pck2"][l] if l < len(r["native"]["pck2"]) else None),
                                   fmt(head_at(r, l))) for r in results.values()]))
    lines.append(row("mean", [(fmt(r["native"]["avg_pck2"]), fmt(r["heads"]["avg_pck2"] if "heads" in r else None))
                              for r in results.values()]))
    lines.append(row("peak", [(f"{r['native']['peak_pck2']:.3f}@{r['native']['peak_layer']}",
                               f"{r['heads']['peak_pck2']:.3f}@{r['head_layers'][r['heads']['peak_layer']]}"
                               if "heads" in r else "-") for r in results.values()]))
    if any("chance_pck2" in r for r in results.values()):
        lines.append(row("chance", [(fmt(r.get("chance_pck2")), "") for r in results.values()]))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="stock model (HF id or folder, an export too) or training "
                   "checkpoint (checkpoint.pt or its run folder, any objective); repeat to compare "
                   "(default: the embedded tiny model, runs/tiny-qwen2_5_vl)")
    p.add_argument("--name", action="append", help="legend name, one per --model (default: the run folder's "
                   "name, e.g. vqa for runs/vqa/checkpoint.pt, with more of the path where two would clash)")
    p.add_argument("--scenes", default="data/synthetic/val", help="folder of DL3DV-layout scenes, held out "
                   "(default: %(default)s, rendered if absent)")
    p.add_argument("--out", default="runs/probe", help="output folder for probe.json and probe.png "
                   "(default: %(default)s)")
    p.add_argument("--frames", type=int, default=8, help="consecutive frames per sample, at least 2 "
                   "(default: %(default)s)")
    p.add_argument("--limit", type=int, default=8, help="number of samples (default: %(default)s; "
                   "the paper: 200 sequences)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available, else cpu; here %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, help="dtype of the weights (default: bfloat16 on CUDA, float32 on "
                   "CPU); q, k and embeddings are compared in float32 either way")
    p.add_argument("--attn-implementation", choices=ATTN, help="attention kernel passed to from_pretrained, stock "
                   "models only: a checkpoint is rebuilt with its run's own (default: transformers' own, sdpa); "
                   "the probe reads q and k before attention")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out sample draw (default: %(default)s)")
    p.add_argument("--no-rotary", action="store_true", help="diagnostic: native q/k before the rotary embedding "
                   "(what M-RoPE costs the cross-frame match; G8 itself applies it)")
    p.add_argument("--sharpen", type=float, default=1.0, help="diagnostic: multiply the native attention's logits "
                   "q.k/sqrt(d) by this (> 1: a sharper softmax of the same q and k, as a confidence check; G8 is 1)")
    args = p.parse_args()
    if args.name and not args.model:
        p.error(f"--name given {len(args.name)} time(s) without --model: give one --model per --name")
    if args.name and len(args.name) != len(args.model):
        p.error(f"{len(args.model)} --model but {len(args.name)} --name: give one --name per --model, or none")
    if args.name and len(set(args.name)) < len(args.name):
        p.error(f"--name {args.name}: names must differ (results are stored by name)")
    if not 0 < args.sharpen < math.inf:
        p.error(f"--sharpen {args.sharpen}: must be a finite number > 0")
    if args.frames < 2 or args.limit < 1:
        p.error(f"--frames {args.frames} --limit {args.limit}: need at least 2 frames and 1 sample")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    models = args.model or [M.build_tiny("runs/tiny-qwen2_5_vl")]
    names = args.name or default_names(models)
    if args.scenes == "data/synthetic/val":
        synth.ensure_synthetic("data/synthetic")
    os.makedirs(args.out, exist_ok=True)
    results, extra = {}, []
    for m, (name, path) in enumerate(zip(names, models)):
        try:
            vlm, proc, gasp, cfg = M.load(path, args.device, dtype, args.attn_implementation)
        except (OSError, ValueError) as e:  # missing or broken files, an unknown id, misfitting weights
            p.error(f"--model {path}: {e}")
        tau = cfg.get("tau") if gasp is not None else None  # the run's own τ: the heads were trained with it
        try:
            samples = probe_samples(args.scenes, proc.size, args.frames, args.limit, args.seed)
        except (OSError, ValueError) as e:
            p.error(f"--scenes {args.scenes}: {e}")
        results[name] = run_probe(vlm, proc, samples, gasp, tau, args.device, f"probe {name}", not args.no_rotary,
                                  args.sharpen)
        results[name].update(model=path, config=cfg, scenes=args.scenes, frames=args.frames, samples=len(samples),
                             rotary=not args.no_rotary, sharpen=args.sharpen, dtype=dtype,
                             attn_implementation=args.attn_implementation)
        extra.append(correspondence_figure(vlm, proc, samples[0], results[name]["native"]["peak_layer"], args.device,
                                           name, model_color(m)))
        del vlm, gasp  # one model in memory at a time
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    with open(os.path.join(args.out, "probe.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    figure(results, extra).save(os.path.join(args.out, "probe.png"))
    print(table(results))
    print(f"wrote {args.out}/probe.json and {args.out}/probe.png")


if __name__ == "__main__":
    main()
