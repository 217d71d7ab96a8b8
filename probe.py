"""The paper's correspondence diagnostic (GASP §4 "Correspondence Analysis").

For every LLM layer: does the layer's own query of a point in a later frame attend to the same
surface point in an earlier frame?

    G8   P = mean over attention heads of softmax_j(q_i · k_j / √attn_dim)   q from frame a (later), k from
         frame b (earlier), rotary / M-RoPE applied; prediction = argmax_j P, confidence = max_j P
    G9   hit@δ = ||token(pred) - token(gt)||₂ ≤ δ tokens, δ ∈ {1, 2}  (paper: PCK@2patch)
         chance = mean over gt tokens of |{tokens within δ of gt}| / (h·w)  (a uniformly random prediction)
    G10  ρ_l = Pearson(confidence, hit@2) per layer;  Y(Δt) = PCK(Δt) / PCK(smallest gap), Δt in original frames

Beside ρ (ours, not the paper's): AUROC_l = P(confidence of a random hit > that of a random miss), ties half, a
calibration measure that does not depend on the hit rate (ρ of a 0/1 hit is bounded by it).

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
    python probe.py --video clip.mp4 --model runs/gasp --points 320,240 --layers all --out runs/video   # any video
    torchrun --nproc_per_node 8 probe.py --model runs/gasp --scenes /data/dl3dv_val --limit 200   # samples split
    python probe.py --model Qwen/Qwen2.5-VL-72B-Instruct --device-map auto --scenes /data/dl3dv_val   # > one GPU
Outputs probe.json (every number, settings, model and data), probe.png (panels a-d) and a printed table;
docs/probe.md says how to read the figure and what each key of probe.json means. The drawing is in figures/.
--video (no ground truth, so no metrics): video.png (per model and layer the query points' attention over every
earlier frame, argmax ringed, and the patch flow of argmax matches: the paper's visualisation panels (a)/(b)) and
video.json (each query's argmax match and confidence per model, layer and frame).
References: GASP arXiv 2605.30231; DiffTrack (arXiv 2506.17220) for Q-K matching and confidence.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import data
from figures import charts, correspondence
import model as M
from runtime import distributed
from scenes import frames as frames_io, synth

# Notation: F frames, T = h*w tokens per frame (the token grid), H attention heads, d = attn_dim (the attention
# head size), N tracks, L layers, r embedding size of the GASP head.

DTYPES = ("bfloat16", "float16", "float32")
ATTN = ("sdpa", "eager", "flash_attention_2")


def track_tokens(tracks, token_px: int, grid, device=None) -> torch.Tensor:
    """(F, N, 2) long: the token (x, y) holding each track point (pixels / token size, floored, clamped to the
    h x w grid); the one rule by which the probe and its zero-motion reference place points on tokens."""
    h, w = grid
    tok = (torch.as_tensor(tracks, device=device).float() / token_px).floor().long()
    tok[..., 0].clamp_(0, w - 1)
    tok[..., 1].clamp_(0, h - 1)
    return tok


def match(q: torch.Tensor, k: torch.Tensor, sample: dict, token_px: int, grid, scale: float) -> dict:
    """G8-G9 for one layer and one sample, every pair a > b (later frame queries the earlier one).
    q, k (F, T, H, d). Returns flat arrays over valid (pair, track): hit1, hit2, conf, gap.
    Assumption: the softmax runs over the earlier frame's tokens only (not the whole causal context), attention
    heads are pooled by averaging their distributions, and a track's query is the q of the token holding it in
    the later frame; the paper gives PCK@2patch and the confidence, not these details."""
    h, w = grid
    visible = torch.as_tensor(sample["visible"], device=q.device)
    fidx = torch.as_tensor(sample["frame_index"], device=q.device)
    tok = track_tokens(sample["tracks"], token_px, grid, q.device)  # (F, N, 2), on the layer's device
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
    return {key: torch.cat(v).cpu().numpy() if v else np.zeros(0) for key, v in out.items()}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """G10: Pearson correlation; 0 when either side is constant."""
    x, y = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def auroc(conf: np.ndarray, hit: np.ndarray) -> float | None:
    """Calibration independent of the hit rate: the area under the ROC curve of confidence separating hits from
    misses, i.e. the Mann-Whitney U / (n_hit · n_miss) =
        P(conf of a random hit > conf of a random miss) + ½ P(equal);
    1: every hit more confident than every miss, 0.5: confidence says nothing about the hit, 0: reversed.
    None where there are no hits or no misses (undefined, not 0.5). Counted by sorting: O(n log n)."""
    conf, hit = np.asarray(conf, float), np.asarray(hit, bool)
    miss = np.sort(conf[~hit])
    n_hit, n_miss = int(hit.sum()), len(miss)
    if n_hit == 0 or n_miss == 0:
        return None
    below = np.searchsorted(miss, conf[hit], "left")  # misses strictly less confident than each hit
    tied = np.searchsorted(miss, conf[hit], "right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (n_hit * n_miss))


def temporal(hit: np.ndarray, gap: np.ndarray) -> dict:
    """G10: Y(Δt) = PCK(Δt) / PCK(smallest gap present), for every gap present; that is PCK(Δt) / PCK(1) only
    where two frames 1 apart were probed (probe_samples takes consecutive frames, so they are)."""
    gaps = np.unique(gap)
    pck = {int(g): float(hit[gap == g].mean()) for g in gaps}
    base = pck[int(gaps[0])] if len(gaps) else 0.0
    return {g: (v / base if base > 0 else 0.0) for g, v in pck.items()}


def layer_metrics(records: list[list[dict]]) -> dict:
    """Per-layer PCK@1, PCK@2, ρ, AUROC and Y(Δt) from records[layer] = one `match` dict per sample, pooled over
    samples; also ρ and AUROC per sample (sequence) as their mean and std over the samples that have one
    (rho_seq_n, auroc_seq_n; for ρ, our reading of the paper's shaded bands). Every per-layer value is a list
    over layers, then peak_layer, peak_pck2, avg_pck2; an undefined AUROC (no hits or no misses; no sample with
    both) is None."""
    res = {"pck1": [], "pck2": [], "rho": [], "rho_seq_mean": [], "rho_seq_std": [], "rho_seq_n": [],
           "auroc": [], "auroc_seq_mean": [], "auroc_seq_std": [], "auroc_seq_n": [], "temporal": [], "n": []}
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
        res["auroc"].append(auroc(rec["conf"], hit2))
        # a sample with only hits or only misses has no AUROC: left out (equal confidences are defined: 0.5)
        seq = [a for a in (auroc(r["conf"], r["hit2"]) for r in per_sample) if a is not None]
        res["auroc_seq_mean"].append(float(np.mean(seq)) if seq else None)
        res["auroc_seq_std"].append(float(np.std(seq)) if seq else None)
        res["auroc_seq_n"].append(len(seq))
        res["temporal"].append(temporal(hit2, rec["gap"]))
        res["n"].append(int(len(hit2)))
    peak = int(np.argmax(res["pck2"]))
    res.update(peak_layer=peak, peak_pck2=res["pck2"][peak], avg_pck2=float(np.mean(res["pck2"])))
    return res


def static_pck(samples: list[dict], token_px: int, grid, delta: float = 2.0) -> dict:
    """The zero-motion reference: PCK@δ of answering every query with its own token in the later frame (as if
    the point had not moved), over the same (pair, track)s `match` scores: {"pck2": pooled, "by_gap": {Δt: PCK}}.
    On slow footage it is high at small gaps, so a layer that attends to the same position scores well there
    without matching anything; read PCK(Δt) and Y(Δt) beside it."""
    hits, gaps = [], []
    for s in samples:
        tok = track_tokens(s["tracks"], token_px, grid).float().numpy()  # (F, N, 2)
        visible, fidx = np.asarray(s["visible"]), np.asarray(s["frame_index"])
        for a in range(1, len(tok)):
            ok = visible[a][None] & visible[:a]  # (a, N)
            hits.append((np.linalg.norm(tok[a][None] - tok[:a], axis=-1) <= delta)[ok])
            gaps.append(np.broadcast_to((fidx[a] - fidx[:a])[:, None], ok.shape)[ok])
    hit, gap = (np.concatenate(v) if v else np.zeros(0) for v in (hits, gaps))
    return {"pck2": float(hit.mean()) if len(hit) else 0.0,
            "by_gap": {int(g): float(hit[gap == g].mean()) for g in np.unique(gap)}}


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
              rotary: bool = True, sharpen: float = 1.0, env: distributed.Env | None = None) -> dict | None:
    """Native Q-K metrics for every layer (and GASP head metrics with temperature tau when gasp is given), pooled
    over samples, plus the grid, the chance PCK and the zero-motion reference (static_pck). Diagnostics, not G8:
    rotary=False reads q and k before the rotary embedding; sharpen multiplies the attention's logits (a sharper
    softmax, the same q and k).
    q/k and embeddings are compared in float32 whatever the model's dtype.
    Data-parallel under torchrun (`env`, runtime.distributed): rank k matches samples k, k + world, ...; rank 0
    gathers the per-sample records, puts them back in sample order and returns what one process returns (the
    other ranks return None)."""
    env = env or distributed.Env(False, 0, 1, "cpu")
    n_layers = len(M.llm_layers(vlm))
    records = {}  # sample index -> (one list of `match` dicts per layer, one per head layer or None)
    for i in tqdm(range(env.rank, len(samples), env.world), desc=desc, leave=False, disable=not env.master):
        sample = samples[i]
        native = [[] for _ in range(n_layers)]
        heads = [[] for _ in range(len(gasp.layer_ids))] if gasp is not None else None
        records[i] = (native, heads)
        inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT]).items()}
        tmap = proc.token_map(inputs["input_ids"][0], len(sample["frames"]))

        def on_layer(l, q, k):  # q, k (F, T, H, d) float32
            native[l].append(match(q, k, sample, proc.token_px, proc.grid, sharpen * q.shape[-1] ** -0.5))

        forward = (lambda: gasp.embed(inputs, tmap)) if gasp is not None else None  # heads read in the same pass
        out = M.native_qk(vlm, inputs, tmap, on_layer, forward=forward, rotary=rotary)
        if gasp is not None:
            _, e_q, e_k = out  # (L, F, h, w, r) each
            for j in range(e_q.shape[0]):
                q = e_q[j].flatten(1, 2)[:, :, None].float()  # (F, T, 1, r): the embedding as one attention head
                k = e_k[j].flatten(1, 2)[:, :, None].float()
                heads[j].append(match(q, k, sample, proc.token_px, proc.grid, 1 / tau))
    parts = distributed.gather(records, env)
    if parts is None:
        return None
    records = {i: rec for part in parts for i, rec in part.items()}
    records = [records[i] for i in sorted(records)]  # sample order, as one process has them
    native = [[m for nat, _ in records for m in nat[l]] for l in range(n_layers)]
    heads = [[m for _, hd in records for m in hd[j]] for j in range(len(gasp.layer_ids))] if gasp is not None else None
    out = {"native": layer_metrics(native), "grid": list(proc.grid),
           "chance_pck1": chance_pck(proc.grid, 1), "chance_pck2": chance_pck(proc.grid, 2),
           "static": static_pck(samples, proc.token_px, proc.grid)}
    if heads is not None:
        out.update(heads=layer_metrics(heads), head_layers=gasp.layer_ids, tau=tau)
    return out


def probe_samples(scenes: str, size, frames: int, limit: int, seed: int = 0) -> list[dict]:
    """Up to `limit` held-out samples of consecutive frames (frame gaps 1 .. frames-1), no clip twice: scenes of
    few frames hold few distinct clips (a 24-frame scene one 24-frame clip), and a repeated clip would count its
    points twice and pass for another sequence. Fewer than asked are probed, with a note, when no more exist."""
    ds = data.SceneDataset(scenes, size=size, num_frames=frames, seed=seed, contiguous=True, length=10 * limit)
    exist = sum(max(0, len(sc.frame_index) - frames + 1) for sc in ds.scenes)
    samples, seen = [], set()
    for k in range(len(ds)):
        if len(samples) == min(limit, exist):
            break
        s = ds[k]
        clip = (s["scene"], int(s["frame_index"][0]))
        if clip not in seen:
            seen.add(clip)
            samples.append(s)
    if len(samples) < limit:
        print(f"note: {scenes}: {len(samples)} distinct {frames}-frame clips probed of the {limit} asked "
              f"({len(ds.scenes)} scenes hold {exist}); add scenes or lower --frames for more")
    if not any(s["visible"].sum(0).max() > 1 for s in samples):
        raise ValueError(f"{scenes}: no track is visible in two frames; check depth and poses (python data.py show)")
    return samples


# ----------------------------------------------------------------------------- the figure and the table

@torch.no_grad()
def correspondence_figure(vlm, proc, sample, layer: int, device="cpu", name: str = "", color=charts.GREY,
                          width: int = charts.FIG_W) -> Image.Image:
    """(d), one row per model, from the model: the layer's native Q-K attention (G8) of the last (later) frame
    over the first (earlier) one, for the middle track visible in both; figures/correspondence.py draws it."""
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
    qi = int(min(v // proc.token_px, h - 1)) * w + int(min(u // proc.token_px, w - 1))  # the query's token
    pred, tok = P.argmax(-1).numpy(), np.arange(h * w)  # (T,) argmax token in the earlier frame, per token
    flow = np.stack([pred % w - tok % w, pred // w - tok // w], -1).reshape(h, w, 2)  # (h, w, 2) tokens
    return correspondence.row(sample["frames"][a], sample["frames"][b], (u, v), sample["tracks"][b, i],
                              P[qi].view(h, w).numpy(), flow, (int(sample["frame_index"][a]),
                              int(sample["frame_index"][b])), layer, name, color, width)


def figure(results: dict, extra: list[Image.Image]) -> Image.Image:
    """A header saying what is measured, panels (a) PCK@2 per layer with the chance and zero-motion lines, (b) ρ per
    layer and its twin (b') AUROC per layer, (c) Y(Δt) at the peak layer with the zero-motion curve, one colour per
    model (its GASP head: the same colour, hatched / dashed); then the rows of (d) in `extra`."""
    undefined = lambda xs: [np.nan if x is None else x for x in xs]  # noqa: E731  (AUROC None: not drawn)
    a, b, b2, c = [], [], [], []
    for m, (name, res) in enumerate(results.items()):
        color = charts.model_color(m)
        for kind, style_bar, style_line in (("native", "solid", "solid"), ("heads", "hatched", "dashed")):
            if kind not in res:
                continue
            r = res[kind]
            label = f"{name}: {'native Q-K' if kind == 'native' else 'GASP head'}"
            layers = list(range(len(r["pck2"]))) if kind == "native" else res["head_layers"]
            a.append(dict(label=label, xs=layers, ys=r["pck2"], color=color, style=style_bar))
            for out, key in ((b, "rho"), (b2, "auroc")):
                mean, std = np.array(undefined(r[f"{key}_seq_mean"])), np.array(undefined(r[f"{key}_seq_std"]))
                out.append(dict(label=label, xs=layers, ys=undefined(r[key]), color=color, style=style_line,
                                band=(list(mean - std), list(mean + std))))
            t = {int(g): y for g, y in r["temporal"][r["peak_layer"]].items()}  # json turns keys into strings
            c.append(dict(label=f"{label}, layer {layers[r['peak_layer']]}", xs=sorted(t),
                          ys=[t[g] for g in sorted(t)], color=color, style=style_line))
    grids = {tuple(res["grid"]): res["chance_pck2"] for res in results.values()}
    chance = [(v, f"chance {v:.3f} ({g[0]}x{g[1]} grid)" if len(grids) > 1 else f"chance {v:.3f} (a random token)",
               charts.GREY) for g, v in grids.items()]
    static = next((res["static"] for res in results.values() if "static" in res), None)  # the same samples for all
    if static:  # the zero-motion reference: (a) its PCK@2, (c) its Y(dt)
        by_gap = {int(g): v for g, v in static["by_gap"].items()}
        gaps, zero_color = sorted(by_gap), charts.tint(charts.GREY, 0.6)
        chance.append((static["pck2"], f"zero motion {static['pck2']:.3f} (own token)", zero_color))
        c.append(dict(label="zero motion (own token)", xs=gaps, color=zero_color, style="dashed",
                      ys=[by_gap[g] / by_gap[gaps[0]] if by_gap[gaps[0]] else 0.0 for g in gaps]))
    panels = [charts.chart(a, "(a) PCK@2: share of tracks whose best-attended earlier-frame token is within 2 "
                              "tokens of the truth", "LLM layer", "PCK@2", bars=True, hlines=chance),
              charts.chart(b, "(b) rho: Pearson of match confidence (max attention) and hit@2; line: all tracks, "
                              "band: per-sample mean +- std", "LLM layer", "rho", ylim=(-1.0, 1.0)),
              charts.chart(b2, "(b') AUROC: P(a random hit is more confident than a random miss), whatever the hit "
                               "rate; line: all, band: per sample", "LLM layer", "AUROC",
                           hlines=[(0.5, "AUROC = 0.5: confidence says nothing", charts.LIGHT)]),
              charts.chart(c, "(c) temporal robustness Y(dt) = PCK@2(dt) / PCK@2(smallest gap), at each one's peak "
                              "layer", "frame gap dt (frames of the source video)", "Y(dt)", ylim=(0.0, 1.5),
                           hlines=[(1.0, "Y = 1: no decay with distance", charts.LIGHT)])] + extra
    first = next(iter(results.values()), {})
    notes = ["Correspondence probe: for every LLM layer, does a token of a later frame attend to the same surface "
             "point in an earlier frame?",
             "native Q-K: the layer's own attention, softmax(q.k / sqrt(d)) averaged over attention heads, rotary "
             "applied. GASP head: softmax(e_q.e_k / tau)",
             "of the trained head's embeddings (hatched bars, dashed lines). One colour per model in every panel."]
    diagnostic = [text for key, off, text in (("rotary", True, "q and k read BEFORE the rotary embedding"),
                                              ("sharpen", 1.0, f"logits multiplied by {first.get('sharpen')}"))
                  if first.get(key, off) != off]
    if diagnostic:  # not G8: say so on the figure itself
        notes.append("DIAGNOSTIC, not the paper's probe: native Q-K " + "; ".join(diagnostic) + ".")
    if "samples" in first:
        notes.append(f"Data: {first['samples']} samples of {first['frames']} consecutive frames from "
                     f"{first['scenes']}; every later frame queries every earlier one.")
    return charts.stack([charts.notes(notes)] + panels)


def pck_table(results: dict) -> str:
    """PCK@2 per layer of native Q-K (and GASP heads) for each model as plain text, with mean, peak and chance,
    and ρ and AUROC at the peak layer."""
    names = list(results)
    cw = [max(20, len(n) + 2) for n in names]  # one column block per model: Q-K, head
    n_layers = max(len(r["native"]["pck2"]) for r in results.values())

    def row(label, cells):
        return f"{label:>6} " + "".join(f"{qk:>{c - 10}}{hd:>10}" for (qk, hd), c in zip(cells, cw))

    def head_at(r, l):
        return r["heads"]["pck2"][r["head_layers"].index(l)] if "heads" in r and l in r["head_layers"] else None

    def at_peak(r, key, spec):  # '-': no GASP head, an undefined AUROC, or a probe stored without the key
        if r is None or r.get(key) is None or r[key][r["peak_layer"]] is None:
            return "-"
        return f"{r[key][r['peak_layer']]:{spec}}"

    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["PCK@2 per LLM layer (Q-K: the layer's own attention; head: its GASP head; -: none); rho and AUROC "
             "at the peak layer",
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
    for key, spec in (("rho", "+.2f"), ("auroc", ".3f")):
        lines.append(row(key, [(at_peak(r["native"], key, spec), at_peak(r.get("heads"), key, spec))
                               for r in results.values()]))
    if any("chance_pck2" in r for r in results.values()):
        lines.append(row("chance", [(fmt(r.get("chance_pck2")), "") for r in results.values()]))
    if any("static" in r for r in results.values()):
        lines.append(row("static", [(fmt(r["static"]["pck2"] if "static" in r else None), "")
                                    for r in results.values()]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- any video, no ground truth

class UsageError(ValueError):
    """A flag of the video probe that cannot be honoured (main turns it into a usage error naming the flag)."""


def query_points(specs: list[str] | None, width: int, height: int) -> np.ndarray:
    """--points 'X,Y' ... in pixels of the last frame -> (n, 2) float; None: a 3x3 lattice at the centres of the
    frame's thirds. A point outside the frame (0 <= X < width, 0 <= Y < height) or not 'X,Y' is a UsageError."""
    if not specs:
        return np.array([[width * (i + 0.5) / 3, height * (j + 0.5) / 3] for j in range(3) for i in range(3)])
    pts = []
    for spec in specs:
        try:
            x, y = (float(v) for v in spec.split(","))
        except ValueError:
            raise UsageError(f"--points {spec!r}: not X,Y (pixels of the last frame, e.g. --points 120,80)") from None
        if not (0 <= x < width and 0 <= y < height):
            raise UsageError(f"--points {spec}: outside the last frame ({width}x{height} px: 0 <= X < {width}, "
                             f"0 <= Y < {height})")
        pts.append((x, y))
    return np.array(pts)


def video_layers(spec: str | None, n_layers: int) -> list[int]:
    """--layers: None -> the first, middle and last layer; else model.parse_layers' spec ('all', 'A-B', 'a,b')."""
    if spec is None:
        return sorted({0, n_layers // 2, n_layers - 1})
    try:
        return M.parse_layers(spec, n_layers)
    except ValueError as e:
        raise UsageError(str(e)) from None


def frames_that_fit(vlm, proc, prompt: str) -> int:
    """How many frames fit in the model's context: (max_position_embeddings - the tokens besides the frames) //
    tokens per frame, the other tokens (chat template, prompt, LLaVA-OneVision's newline) counted on a one-frame
    input. Assumption: the text config's max_position_embeddings is the context (M-RoPE's ids grow more slowly
    than the sequence, so this is the safe side)."""
    T = proc.grid[0] * proc.grid[1]
    other = proc([[np.zeros((*proc.size, 3), np.uint8)]], [prompt])["input_ids"].shape[1] - T
    return (M.text_config(vlm).max_position_embeddings - other) // T


@torch.no_grad()
def video_attention(vlm, proc, frames: list[np.ndarray], query_tokens: np.ndarray, layers: list[int],
                    device="cpu") -> dict[int, dict]:
    """G8 on a video, the last frame a = F-1 querying every earlier frame b: per layer,
        P_b = mean over attention heads of softmax_j(q_a,i · k_b,j / √attn_dim)   (T, T), rotary applied,
    read exactly where the attention receives q and k (model.native_qk), the frames placed as the family's
    training input places them (the processor). Returns {layer: {"attention": (F-1, n, T) the queries' rows of
    P_b, "pred": (F-1, T) argmax token of every last-frame token, "conf": (F-1, T) its attention}}, float32 CPU.
    query_tokens (n,): token indices (y * w + x) of the query points in the last frame."""
    inputs = {k: v.to(device) for k, v in proc([frames], [M.PROMPT]).items()}
    tmap = proc.token_map(inputs["input_ids"][0], len(frames))
    a, qi = len(frames) - 1, torch.as_tensor(query_tokens)
    out = {}

    def on_layer(l, q, k):  # q, k (F, T, H, d) float32
        rows, pred, conf = [], [], []
        for b in range(a):  # one (H, T, T) at a time
            P = torch.softmax(torch.einsum("thd,shd->hts", q[a], k[b]) / q.shape[-1] ** 0.5, -1).mean(0)  # (T, T)
            c, i = P.max(-1)
            rows.append(P[qi.to(P.device)].cpu())
            pred.append(i.cpu())
            conf.append(c.cpu())
        out[l] = {"attention": torch.stack(rows), "pred": torch.stack(pred), "conf": torch.stack(conf)}

    M.native_qk(vlm, inputs, tmap, on_layer, layers=layers)
    return out


def video_probe(video: str, models: list[str], names: list[str], points: list[str] | None, layers: str | None,
                num_frames: int, size: int | None, out: str, device="cpu", dtype="float32",
                attn_implementation: str | None = None) -> dict:
    """Every model's chosen layers on `num_frames` frames sampled uniformly from `video` (an mp4 or a folder of
    frames): writes out/video.json (each query's argmax match and confidence per model, layer and earlier frame,
    in tokens and in the video's pixels) and out/video.png (the figure); returns the json's content.
    Each model sees the frames at its own processor's size (`size`: the side wanted instead, whole tokens as
    model.frame_size rounds it); points are in pixels of the last frame as read. UsageError for what the flags
    cannot give: an unreadable video or model, a point outside the frame, more frames than the context holds."""
    clip, pts, results, blocks = None, None, {}, []
    for m, (name, path) in enumerate(zip(names, models)):
        try:
            vlm, proc, _, cfg = M.load(path, device, dtype, attn_implementation)
        except (OSError, ValueError) as e:
            raise UsageError(f"--model {path}: {e}") from None
        if size is not None:  # the model's own processor settings, at the side asked for
            proc = M.Processor(vlm.config, proc.tokenizer, M.frame_size(vlm.config, size), folder=proc.folder)
        fit = frames_that_fit(vlm, proc, M.PROMPT)
        if num_frames > fit:
            raise UsageError(f"--frames {num_frames}: too long for the context of {path} (max_position_embeddings "
                             f"{M.text_config(vlm).max_position_embeddings}, {proc.grid[0] * proc.grid[1]} tokens "
                             f"a frame at {proc.size[0]}x{proc.size[1]} px, plus the prompt): at most {fit} frames "
                             f"fit; use --frames {fit} or fewer")
        if clip is None:  # decoded once the first model has said how many frames it can take
            try:
                clip = frames_io.read_clip(video, num_frames)
            except (OSError, ValueError, ImportError) as e:
                raise UsageError(f"--video {video}: {e}") from None
            pts = query_points(points, clip[-1].shape[1], clip[-1].shape[0])
        ids = video_layers(layers, len(M.llm_layers(vlm)))
        (h, w), px, F = proc.grid, proc.token_px, len(clip)
        q_xy = pts * [proc.size[1] / clip[-1].shape[1], proc.size[0] / clip[-1].shape[0]]  # in the model's px
        q_tok = np.minimum((q_xy / px).astype(int), [w - 1, h - 1])  # (n, 2) token (x, y) of each query
        qi = q_tok[:, 1] * w + q_tok[:, 0]  # (n,) token index
        got = video_attention(vlm, proc, clip, qi, ids, device)
        tok_xy = np.stack([np.arange(h * w) % w, np.arange(h * w) // w], -1)  # (T, 2) token (x, y)
        back = [np.array([f.shape[1] / proc.size[1], f.shape[0] / proc.size[0]]) for f in clip]  # model -> video px
        per_layer = {}
        for l in ids:
            pred, conf = got[l]["pred"].numpy(), got[l]["conf"].numpy()  # (F-1, T)
            match = tok_xy[pred[:, qi]]  # (F-1, n, 2) each query's argmax token in each earlier frame
            centre = (match + 0.5) * px  # (F-1, n, 2) its centre in the model's px
            per_layer[str(l)] = [{"point": pts[j].tolist(), "token": q_tok[j].tolist(), "matches": [
                {"frame": b, "token": match[b, j].tolist(), "px": (centre[b, j] * back[b]).round(1).tolist(),
                 "confidence": float(conf[b, qi[j]])} for b in range(F - 1)]} for j in range(len(pts))]
            flows = (tok_xy[pred] - tok_xy).reshape(F - 1, h, w, 2)  # every last-frame token to its argmax
            heat = got[l]["attention"].sum(1).view(F - 1, h, w).numpy()  # the queries' attention, summed
            blocks.append(correspondence.video_block([proc.resize(f) for f in clip], q_xy, heat, centre,
                                                     conf[:, qi], flows, l, name, charts.model_color(m),
                                                     video_width(F)))
        results[name] = {"model": path, "config": cfg, "size": list(proc.size), "grid": [h, w], "token_px": px,
                         "frames_that_fit": fit, "dtype": dtype, "attn_implementation": attn_implementation,
                         "layers": per_layer}
        del vlm  # one model in memory at a time
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    res = {"video": video, "frames": len(clip), "frame_size": list(clip[-1].shape[:2]), "prompt": M.PROMPT,
           "points": pts.tolist(), "models": results}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "video.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    video_figure(res, blocks).save(os.path.join(out, "video.png"))
    return res


def video_width(num_frames: int) -> int:
    """The video figure's width: the probe figure's, wider where more than 8 frames would make tiles small."""
    return max(charts.FIG_W, 10 + num_frames * 120)


def video_figure(res: dict, blocks: list[Image.Image]) -> Image.Image:
    """A header saying what is drawn, the query points' legend and flow key, then one block per model and layer
    (figures/correspondence.video_block)."""
    F, width = res["frames"], video_width(res["frames"])
    notes = ["Any video, no ground truth: where does each LLM layer's own attention go from points on the last frame?",
             "native Q-K (G8): softmax(q.k / sqrt(d)) of the last frame's tokens over one earlier frame's tokens, "
             "rotary applied, averaged",
             "over attention heads; its argmax is the predicted match, the argmax's attention its confidence ('conf': "
             "mean over the queries,",
             "and its multiple of the uniform attention 1/tokens: 1x = no preference for any token).",
             f"Video: {res['video']}, {F} frames sampled uniformly (frame 0 first; frame {F - 1}, the last, holds "
             f"the queries); prompt '{res['prompt']}'.",
             "Each block, top: red = the queries' attention summed over each earlier frame, a ring per query at "
             "its argmax; bottom: every",
             f"last-frame token's argmax as patch flow frame {F - 1} -> that frame, coloured by the key below. "
             "One swatch colour per model."]
    return charts.stack([charts.notes(notes, width), correspondence.video_legend(np.array(res["points"]), width)]
                        + blocks)


def parser() -> argparse.ArgumentParser:
    """probe.py's command line: the scene probe (G8-G10), or --video."""
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
    p.add_argument("--frames", type=int, default=8, help="consecutive frames per sample, at least 2; with --video: "
                   "frames sampled uniformly from the video (default: %(default)s)")
    p.add_argument("--limit", type=int, default=8, help="number of samples (default: %(default)s; "
                   "the paper: 200 sequences)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu; under torchrun each "
                   "process's cuda:LOCAL_RANK, the samples split between the processes)")
    p.add_argument("--device-map", choices=["auto"], help="auto: a stock model larger than one GPU spread over the "
                   "visible GPUs (transformers' device_map, needs accelerate; under torchrun with --nproc_per_node 1)")
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
    p.add_argument("--video", help="any video without ground truth instead of --scenes: an mp4 (needs PyAV) or a "
                   "folder of frames; writes --out/video.png and video.json (each query's argmax match per layer)")
    p.add_argument("--points", nargs="+", metavar="X,Y", help="--video: query points in pixels of the last frame "
                   "used (default: a 3x3 lattice)")
    p.add_argument("--layers", help="--video: LLM layers to draw, 'all', 'A-B' or 'a,b,c' (default: the first, "
                   "middle and last)")
    p.add_argument("--size", type=int, help="--video: frame side in px instead of the model's own, rounded to whole "
                   "tokens (LLaVA: fixed by its vision tower)")
    return p


def check(p: argparse.ArgumentParser, args):
    """Flag combinations argparse cannot express: a usage error naming the fix."""
    if not args.video and (args.points or args.layers or args.size):
        p.error("--points, --layers and --size belong to --video")
    if args.video and (args.no_rotary or args.sharpen != 1.0):
        p.error("--no-rotary and --sharpen belong to the scene probe, not --video")
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


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    check(p, args)
    env = distributed.init()  # torchrun: one model copy per process, the samples split between them
    if args.video and env.distributed:
        p.error("--video draws one clip in one process: run it with python, not torchrun")
    try:
        distributed.check_device_map(args.device_map, env)
        device = distributed.process_device(args.device, env)
    except ValueError as e:
        p.error(str(e))
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    models = args.model or ["runs/tiny-qwen2_5_vl"]
    if env.master:  # files are written by rank 0 alone; the others read them after the barrier
        if not args.model:
            M.build_tiny(models[0])
        if args.scenes == "data/synthetic/val" and not args.video:
            synth.ensure_synthetic("data/synthetic")
        os.makedirs(args.out, exist_ok=True)
    env.barrier()
    names = args.name or default_names(models)
    if args.video:
        try:
            video_probe(args.video, models, names, args.points, args.layers, args.frames, args.size, args.out,
                        device, dtype, args.attn_implementation)
        except UsageError as e:
            p.error(str(e))
        print(f"wrote {args.out}/video.json and {args.out}/video.png")
        return
    results, extra = {}, []
    for m, (name, path) in enumerate(zip(names, models)):
        try:
            vlm, proc, gasp, cfg = M.load(path, device, dtype, args.attn_implementation, device_map=args.device_map)
        except (OSError, ValueError) as e:  # missing or broken files, an unknown id, misfitting weights
            p.error(f"--model {path}: {e}")
        where = str(vlm.device) if args.device_map else device  # a device map: inputs go to its first layers'
        tau = cfg.get("tau") if gasp is not None else None  # the run's own τ: the heads were trained with it
        try:
            samples = probe_samples(args.scenes, proc.size, args.frames, args.limit, args.seed)
        except (OSError, ValueError) as e:
            p.error(f"--scenes {args.scenes}: {e}")
        results[name] = run_probe(vlm, proc, samples, gasp, tau, where, f"probe {name}", not args.no_rotary,
                                  args.sharpen, env)
        if env.master:  # the other ranks have no result: rank 0 gathered their samples
            results[name].update(model=path, config=cfg, scenes=args.scenes, frames=args.frames,
                                 samples=len(samples), rotary=not args.no_rotary, sharpen=args.sharpen, dtype=dtype,
                                 attn_implementation=args.attn_implementation)
            extra.append(correspondence_figure(vlm, proc, samples[0], results[name]["native"]["peak_layer"], where,
                                               name, charts.model_color(m)))
        del vlm, gasp  # one model in memory at a time
        if where.startswith("cuda"):
            torch.cuda.empty_cache()
    if not env.master:
        return
    with open(os.path.join(args.out, "probe.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    figure(results, extra).save(os.path.join(args.out, "probe.png"))
    print(pck_table(results))
    print(f"wrote {args.out}/probe.json and {args.out}/probe.png")


if __name__ == "__main__":
    main()
