"""The paper's correspondence diagnostic (GASP §4 "Correspondence Analysis", DESIGN.md G8-G10).

For every LLM layer: does the layer's own query of a point in a later frame attend to the same
surface point in an earlier frame?

    G8   P = mean_heads softmax_j(q_i · k_j / √d_h)   q from frame a (later), k from frame b (earlier),
         rotary / M-RoPE applied; prediction = argmax_j P, confidence = max_j P
    G9   hit@δ = ||token(pred) - token(gt)||₂ ≤ δ tokens, δ ∈ {1, 2}  (paper: PCK@2patch)
    G10  ρ_l = Pearson(confidence, hit@2) per layer;  Y(Δt) = PCK(Δt) / PCK(1), Δt in original frames

With a training checkpoint the same metrics also run on the heads' embeddings (softmax(e_q·e_k/τ)).

Run:
    python probe.py                                              # the embedded tiny model, synthetic val scenes
    python probe.py --model Qwen/Qwen2.5-VL-7B-Instruct --scenes /data/dl3dv_val --limit 200 --out runs/probe
    python probe.py --model runs/base --model runs/gasp/checkpoint.pt --out runs/compare   # side by side
    python probe.py --model runs/gasp/checkpoint.pt --no-rotary --out runs/prerope  # diagnostic: q/k before M-RoPE
Outputs probe.json (every number, settings, model and data) and probe.png (panels a-d).
References: GASP arXiv 2605.30231; DiffTrack (arXiv 2506.17220) for Q-K matching and confidence.
"""

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

import data
import model as M

# Notation: F frames, T = h*w tokens per frame, H heads, d head size, N tracks, L layers.


def match(q: torch.Tensor, k: torch.Tensor, sample: dict, token_px: int, grid, scale: float) -> dict:
    """G8-G9 for one layer and one sample, every pair a > b (later frame queries the earlier one).
    q, k (F, T, H, d). Returns flat arrays over valid (pair, track): hit1, hit2, conf, gap."""
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


def summarize(records: list[dict]) -> dict:
    """Per-layer PCK@1, PCK@2, ρ and Y(Δt) from the per-layer records pooled over samples."""
    res = {"pck1": [], "pck2": [], "rho": [], "temporal": [], "n": []}
    for rec in records:
        hit2 = rec["hit2"].astype(float)
        res["pck1"].append(float(rec["hit1"].mean()) if len(hit2) else 0.0)
        res["pck2"].append(float(hit2.mean()) if len(hit2) else 0.0)
        res["rho"].append(pearson(rec["conf"], hit2) if len(hit2) > 1 else 0.0)
        res["temporal"].append(temporal(hit2, rec["gap"]))
        res["n"].append(int(len(hit2)))
    peak = int(np.argmax(res["pck2"]))
    res.update(peak_layer=peak, peak_pck2=res["pck2"][peak], avg_pck2=float(np.mean(res["pck2"])))
    return res


def load_for_probe(path: str, device: str = "cpu"):
    """A stock checkpoint -> (vlm, processor, None); a training checkpoint.pt -> (vlm, processor, GASP)."""
    in_dir = os.path.join(path, "checkpoint.pt")
    ckpt_file = in_dir if os.path.isfile(in_dir) else path
    if not ckpt_file.endswith(".pt"):
        vlm, proc = M.load(path, device)
        return vlm, proc, None
    if not os.path.exists(ckpt_file):
        raise FileNotFoundError(f"{ckpt_file}: no training checkpoint here; pass a stock model folder or HF id")
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    cfg = ckpt["config"]
    vlm, proc = M.load(cfg["model"], device, size=(cfg["size"], cfg["size"]))
    vlm = M.freeze_and_lora(vlm, cfg["lora_rank"])
    gasp = M.GASP(vlm, M.parse_layers(cfg["layers"], len(M.llm_layers(vlm))), cfg["head_input"], cfg["head_dim"])
    unexpected = gasp.load_state_dict(ckpt["model"], strict=False).unexpected_keys  # frozen weights come from cfg["model"]
    if unexpected:
        raise ValueError(f"{ckpt_file}: weights {unexpected[:3]}... do not fit {cfg['model']} with these settings")
    return gasp.vlm.eval(), proc, gasp.to(device).eval()


@torch.no_grad()
def run_probe(vlm, proc, samples, gasp=None, tau: float = 0.07, device="cpu", desc="probe",
              rotary: bool = True) -> dict:
    """Native Q-K metrics for every layer (and head metrics when gasp is given), pooled over samples.
    rotary=False reads q and k before the rotary embedding (diagnostic, not G8)."""
    n_layers = len(M.llm_layers(vlm))
    native = [[] for _ in range(n_layers)]
    heads = [[] for _ in range(len(gasp.layer_ids))] if gasp is not None else None
    for sample in tqdm(samples, desc=desc, leave=False):
        inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT]).items()}
        tmap = proc.token_map(inputs["input_ids"][0], len(sample["frames"]))

        def on_layer(l, q, k):
            native[l].append(match(q, k, sample, proc.token_px, proc.grid, q.shape[-1] ** -0.5))

        run = (lambda: gasp(inputs, tmap)) if gasp is not None else None  # heads read in the same forward
        out = M.native_qk(vlm, inputs, tmap, on_layer, run=run, rotary=rotary)
        if gasp is not None:
            _, e_q, e_k = out  # (L, F, h, w, r)
            for j in range(e_q.shape[0]):
                q, k = e_q[j].flatten(1, 2)[:, :, None].float(), e_k[j].flatten(1, 2)[:, :, None].float()
                heads[j].append(match(q, k, sample, proc.token_px, proc.grid, 1 / tau))
    pool = lambda recs: {key: np.concatenate([r[key] for r in recs]) for key in recs[0]}  # noqa: E731
    out = {"native": summarize([pool(r) for r in native])}
    if heads is not None:
        out["heads"] = summarize([pool(r) for r in heads])
        out["head_layers"] = gasp.layer_ids
    return out


def probe_samples(scenes: str, size, frames: int, limit: int, seed: int = 0) -> list[dict]:
    """Held-out samples with consecutive frames, so frame gaps run 1 .. frames-1."""
    ds = data.SceneDataset(scenes, size=size, num_frames=frames, seed=seed, contiguous=True, length=limit)
    samples = [ds[i] for i in range(len(ds))]
    if not any(s["visible"].sum(0).max() > 1 for s in samples):
        raise ValueError(f"{scenes}: no track is visible in two frames; check depth and poses (python data.py show)")
    return samples


# ----------------------------------------------------------------------------- plots (pillow only)

COLORS = [(150, 150, 150), (66, 133, 244), (234, 67, 53), (52, 168, 83), (251, 188, 5)]


def chart(series: dict, title: str, xlabel: str, bars: bool = False, ylim=(0.0, 1.0), size=(520, 300)) -> Image.Image:
    """A small bar or line chart. series: name -> (xs, ys)."""
    W, H = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 44, 28, W - 10, H - 40
    d.text((x0, 6), title, fill="black")
    d.text(((x0 + x1) // 2 - 3 * len(xlabel), H - 16), xlabel, fill="black")
    d.rectangle((x0, y0, x1, y1), outline="black")
    lo, hi = ylim
    Y = lambda v: y1 - (min(max(v, lo), hi) - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
    for t in np.linspace(lo, hi, 5):
        d.line((x0 - 3, Y(t), x0, Y(t)), fill="black")
        d.text((4, Y(t) - 6), f"{t:.2f}", fill="black")
    if lo < 0 < hi:
        d.line((x0, Y(0), x1, Y(0)), fill=(200, 200, 200))
    xs_all = sorted({x for xs, _ in series.values() for x in xs})
    if not xs_all:
        return img
    X = lambda x: x0 + (xs_all.index(x) + 0.5) / len(xs_all) * (x1 - x0)  # noqa: E731
    slot = (x1 - x0) / len(xs_all)
    for x in xs_all[:: max(1, len(xs_all) // 12)]:
        d.text((X(x) - 4, y1 + 4), str(x), fill="black")
    for m, (name, (xs, ys)) in enumerate(series.items()):
        c = COLORS[m % len(COLORS)]
        d.text((x1 - 150, y0 + 4 + 12 * m), f"-- {name}", fill=c)
        if bars:
            bw = slot * 0.8 / len(series)
            for x, v in zip(xs, ys):
                left = X(x) - slot * 0.4 + m * bw
                d.rectangle((left, Y(v), left + bw - 1, Y(lo)), fill=c)
        else:
            pts = [(X(x), Y(v)) for x, v in zip(xs, ys)]
            if len(pts) > 1:
                d.line(pts, fill=c, width=2)
            for p in pts:
                d.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=c)
    return img


def correspondence_figure(vlm, proc, sample, layer: int, device="cpu", size=(520, 300)) -> Image.Image:
    """(d) Left: a query point on the later frame; middle: that layer's attention heatmap on the
    earlier frame; right: patch-wise flow (each token of the later frame -> its argmax token), colour = direction."""
    a, b = len(sample["frames"]) - 1, 0
    inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT]).items()}
    tmap = proc.token_map(inputs["input_ids"][0], len(sample["frames"]))
    got = {}
    M.native_qk(vlm, inputs, tmap, lambda l, q, k: got.setdefault("qk", (q, k)), layers=[layer])
    q, k = got["qk"]
    P = torch.softmax(torch.einsum("thd,shd->hts", q[a], k[b]) / q.shape[-1] ** 0.5, -1).mean(0)  # (T, T)
    h, w = proc.grid
    vis = np.nonzero(sample["visible"][a] & sample["visible"][b])[0]
    i = vis[len(vis) // 2] if len(vis) else 0
    u, v = sample["tracks"][a, i]
    qi = int(min(v // proc.token_px, h - 1)) * w + int(min(u // proc.token_px, w - 1))
    side = size[1] - 20
    frame_a = Image.fromarray(sample["frames"][a]).resize((side, side))
    da = ImageDraw.Draw(frame_a)
    s = side / sample["frames"].shape[2]
    da.ellipse((u * s - 5, v * s - 5, u * s + 5, v * s + 5), outline="red", width=3)
    heat = P[qi].view(h, w).numpy()
    heat = (255 * ((heat - heat.min()) / max(heat.max() - heat.min(), 1e-12)) ** 2).astype(np.uint8)  # contrast
    heat_img = Image.fromarray(heat).resize((side, side), Image.NEAREST)
    dim = Image.fromarray(sample["frames"][b]).resize((side, side)).convert("L").point(lambda p: p // 3).convert("RGB")
    frame_b = Image.composite(Image.new("RGB", (side, side), (255, 40, 0)), dim, heat_img)  # heat in red on a dimmed frame
    gu, gv = sample["tracks"][b, i] * s
    ImageDraw.Draw(frame_b).ellipse((gu - 5, gv - 5, gu + 5, gv + 5), outline="lime", width=3)
    pred = P.argmax(-1)
    dy = (pred // w - torch.arange(h * w) // w).view(h, w).float()
    dx = (pred % w - torch.arange(h * w) % w).view(h, w).float()
    hue = ((torch.atan2(dy, dx) / (2 * np.pi) + 0.5) * 255).byte().numpy()
    mag = (255 * (torch.hypot(dx, dy) / max(h, w)).clamp(0, 1) ** 0.5).byte().numpy()
    flow = Image.merge("HSV", (Image.fromarray(hue), Image.fromarray(mag), Image.new("L", (w, h), 255)))
    flow = flow.convert("RGB").resize((side, side), Image.NEAREST)
    img = Image.new("RGB", (3 * side + 20, size[1]), "white")
    for j, (im, t) in enumerate([(frame_a, "query (red)"), (frame_b, f"layer {layer} attention, gt green"),
                                 (flow, "patch flow (hue = direction)")]):
        img.paste(im, (j * (side + 10), 18))
        ImageDraw.Draw(img).text((j * (side + 10), 3), t, fill="black")
    return img


def figure(results: dict, extra: list[Image.Image]) -> Image.Image:
    """Panels (a) PCK@2 per layer, (b) ρ per layer, (c) Y(Δt), for every model; then (d)."""
    a, b, c = {}, {}, {}
    for name, res in results.items():
        for kind in ("native", "heads"):
            if kind not in res:
                continue
            r, label = res[kind], f"{name} ({'Q-K' if kind == 'native' else 'head'})"
            layers = list(range(len(r["pck2"]))) if kind == "native" else res["head_layers"]
            a[label] = (layers, r["pck2"])
            b[label] = (layers, r["rho"])
            if kind == "native":
                t = r["temporal"][r["peak_layer"]]
                c[label] = (sorted(t), [t[g] for g in sorted(t)])
    panels = [chart(a, "(a) PCK@2 per LLM layer", "layer", bars=True),
              chart(b, "(b) confidence-accuracy rho per layer", "layer", ylim=(-1.0, 1.0)),
              chart(c, "(c) PCK(dt)/PCK(1), peak Q-K layer", "frame gap dt", ylim=(0.0, 1.5))] + extra
    W = max(p.width for p in panels)
    img = Image.new("RGB", (W, sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        img.paste(p, (0, y))
        y += p.height
    return img


def table(results: dict) -> str:
    """Per-layer PCK@2 of native Q-K (and heads) for each model, as plain text."""
    names = list(results)
    lines = ["layer  " + "  ".join(f"{n[:18]:>18} Q-K  head" for n in names)]
    n_layers = len(next(iter(results.values()))["native"]["pck2"])
    for l in range(n_layers):
        row = []
        for n in names:
            r = results[n]
            hp = r["heads"]["pck2"][r["head_layers"].index(l)] if "heads" in r and l in r["head_layers"] else None
            row.append(f"{r['native']['pck2'][l]:>23.3f} " + (f"{hp:5.3f}" if hp is not None else "    -"))
        lines.append(f"{l:5d}  " + "  ".join(row))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="stock checkpoint (folder or HF id) or training checkpoint.pt; "
                   "repeat to compare (default: the embedded tiny model)")
    p.add_argument("--name", action="append", help="legend name per --model (default: folder names)")
    p.add_argument("--scenes", default="data/synthetic/val", help="folder of DL3DV-layout scenes (held out)")
    p.add_argument("--out", default="runs/probe", help="output folder for probe.json and probe.png")
    p.add_argument("--frames", type=int, default=8, help="consecutive frames per sample")
    p.add_argument("--limit", type=int, default=8, help="number of samples (the paper uses 200 sequences)")
    p.add_argument("--tau", type=float, default=0.07, help="temperature of the head similarity")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-rotary", action="store_true", help="diagnostic: native q/k before the rotary embedding "
                   "(what M-RoPE costs the cross-frame match; G8 itself applies it)")
    args = p.parse_args()
    models = args.model or [M.build_tiny("runs/tiny-qwen2_5_vl")]
    names = args.name or [os.path.basename(os.path.normpath(m)) for m in models]
    if args.scenes == "data/synthetic/val":
        data.ensure_synthetic("data/synthetic")
    os.makedirs(args.out, exist_ok=True)
    results, extra = {}, []
    for name, path in zip(names, models):
        vlm, proc, gasp = load_for_probe(path, args.device)
        samples = probe_samples(args.scenes, proc.size, args.frames, args.limit, args.seed)
        results[name] = run_probe(vlm, proc, samples, gasp, args.tau, args.device, f"probe {name}", not args.no_rotary)
        results[name].update(model=path, scenes=args.scenes, frames=args.frames, samples=len(samples),
                             rotary=not args.no_rotary)
        extra.append(correspondence_figure(vlm, proc, samples[0], results[name]["native"]["peak_layer"], args.device))
    with open(os.path.join(args.out, "probe.json"), "w") as f:
        json.dump(results, f, indent=1)
    figure(results, extra).save(os.path.join(args.out, "probe.png"))
    print(table(results))
    print(f"wrote {args.out}/probe.json and {args.out}/probe.png")


if __name__ == "__main__":
    main()
