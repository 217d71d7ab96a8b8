"""Speed and memory of GASP, as ratios against plain fine-tuning (SFT, L_LM only) and the stock model (paper
claim: the correspondence heads are training-only, so inference costs nothing, and training little more).

Per model config, on one model, batch and device: the GASP step's time, peak tensor memory and FLOPs over the
SFT step's (judged <= 1.03 at the 7B models' layer shapes, with and without activation checkpointing), the
exported checkpoint's forward and parameter count against the stock model's, the data path's cost (one
sample from a depth scene and from SfM-only scenes, the DataLoader's rate) and the probe's peak memory.
What each measure means, the configs and the method: docs/bench.md.

Run:
    python bench.py                                   # CPU: the tiny and wide configs and the data measures
    python bench.py --configs paper,paper_llava       # CPU, 7B layer shapes (judged)
    python bench.py --configs paper_gpu               # one GPU: the whole 7B-shaped model, most frames per sample
    python bench.py --configs wide,wide_r64           # how the overhead scales with the head size r
    python bench.py --configs paper --sharding        # DDP against FSDP2: memory per process, 2 gloo processes
    python bench.py --configs paper_gpu --sharding    # the same over every visible GPU, the whole 7B-shaped model
Results go to bench.json (--out) and a table of measures x configs with each target (`report_table`).
References: GASP arXiv 2605.30231; torch.profiler memory events (pytorch.org/docs/stable/profiler.html).
"""

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import data
import model as M
import probe
import train
from runtime import distributed
from scenes import layout, synth
from losses import gasp_losses, pair_targets, total_loss

CONFIGS = {
    "tiny": dict(model={}, frames=4, size=448, r=64, device="cpu"),
    # 2 KV heads (GQA 4:1, as Qwen2.5-VL-7B's 28:4 roughly); d_ff = 2d as in every tiny config.
    "wide": dict(model=dict(layers=8, hidden=512, heads=8, kv_heads=2), frames=8, size=336, r=256, device="cpu"),
}
CONFIGS["gpu"] = {**CONFIGS["wide"], "device": "cuda"}
# Not in the default list: "wide" with the head as narrow relative to the model as the paper's guess at 7B
# (2r / d_q = 512 / 3584 = 1/7 there; 128 / 512 = 1/4 here), to show how the overhead scales with r.
CONFIGS["wide_r64"] = {**CONFIGS["wide"], "r": 64}
# The paper's shapes: 2 LLM layers of the 7B models (GASP's cost is per layer), a small vision tower and a
# 512-token vocabulary, so the SFT step holds little besides those layers: the ratios are per-layer ratios, an
# upper bound for the whole model, whose lm_head and 675M-parameter vision tower add to both steps alike.
# bf16 weights, LoRA and heads in float32 under bf16 autocast (as train.py --dtype bfloat16); every layer
# supervised; "+ckpt" rows with activation checkpointing (train.py --grad-ckpt).
QWEN_7B = dict(hidden=3584, heads=28, kv_heads=4, intermediate=18944, head_dim=128, mrope_section=[16, 24, 24],
               rope_theta=1e6)  # Qwen2.5-VL-7B-Instruct's text config
VICUNA_7B = dict(hidden=4096, heads=32, kv_heads=32, intermediate=11008, head_dim=128)  # θ 1e4: Llama's default
QWEN_VISION_7B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                      fullatt_block_indexes=[7, 15, 23, 31])  # Qwen2.5-VL-7B's vision tower
PAPER = {
    "paper": dict(kind="qwen2_5_vl", model=dict(layers=2, **QWEN_7B), lora=128, depth=28),
    # LLaVA-NeXT-Video-7B: CLIP at 336 px, 24x24 patches pooled by 2 -> 12x12 tokens a frame.
    "paper_llava": dict(kind="llava_next_video", model=dict(layers=2, **VICUNA_7B), vision=dict(image_size=336),
                        lora=512, depth=32),
    # The whole model on one GPU: 28 layers, the real vocabulary and vision tower, --grad-ckpt only; plus the
    # most frames a sample can hold.
    "paper_gpu": dict(kind="qwen2_5_vl", model=dict(layers=28, vision_layers=32, vision_hidden=1280, **QWEN_7B),
                      text=dict(vocab_size=152064, max_position_embeddings=128000), vision=QWEN_VISION_7B, lora=128,
                      device="cuda", grad_ckpt=(True,), max_frames=True, depth=28),
}
for spec in PAPER.values():  # 16 frames at 336² (144 tokens each), 640 tracks, r 256
    for key, value in dict(frames=16, size=336, r=256, device="cpu", dtype=torch.bfloat16,
                           grad_ckpt=(False, True)).items():
        spec.setdefault(key, value)
CONFIGS.update(PAPER)
# For the tests of bench_sharding: a PAPER-like config at toy widths (not judged, not in the default list).
CONFIGS["tiny_shard"] = {**PAPER["paper"], "model": dict(layers=2, hidden=128, heads=2, kv_heads=2), "frames": 4,
                         "size": 112, "r": 16}
TAU, LAMBDA_C, LAMBDA_D = 0.07, 0.3, 1.0  # the paper's τ and λ
PARTS = ("capture", "heads", "infonce", "depth", "recompute")
SAMPLE = dict(num_frames=16, size=(336, 336), lattices=(8, 24))  # the data-loader target: 640 tracks
SIZE_960P = (540, 960)  # DL3DV-960P's images_4/ (H, W); its COLMAP model is at 4x
# measure, target, check, configs the target applies to (none: reported, not judged)
TARGETS = [
    # GASP's cost is judged at the paper's shapes (PAPER_TARGETS); at these toy widths it is reported only.
    ("step_time_ratio", "none (paper rows)", None, ()),
    ("step_flop_ratio", "none (exact)", None, ()),
    ("peak_memory_ratio", "none (paper rows)", None, ()),
    ("export_forward_ratio", "1.00 +- 0.05", lambda v: abs(v - 1) <= 0.05, ("tiny", "wide", "gpu")),
    ("export_param_delta", "0", lambda v: v == 0, ("tiny", "wide", "gpu")),
    ("sample_build_fraction", "<= 0.25 (wide)", lambda v: v <= 0.25, ("wide", "gpu")),
    ("sample_build_ms", "<= 30 ms", lambda v: v <= 30, ("tiny", "wide", "gpu")),
    ("sparse_sample_build_ms", "<= 30 ms", lambda v: v <= 30, ("tiny", "wide", "gpu")),
    ("probe_memory_ratio", "<= 1.5", lambda v: v <= 1.5, ("tiny", "wide", "gpu")),
]


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def times_ms(fns: dict, repeats: int, device: str, warmup: int = 2) -> dict:
    """Wall times (ms) of each callable over `repeats`, the callables interleaved within every repeat, their
    order reversed every other repeat (so a drift or the step before does not favour one): {name: [ms, ...]}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in (list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(1e3 * (time.perf_counter() - t))
    return times


def median_ms(fns: dict, repeats: int, device: str, warmup: int = 2) -> dict:
    """Median wall time (ms) of each callable (times_ms)."""
    return {name: statistics.median(ts) for name, ts in times_ms(fns, repeats, device, warmup).items()}


def peak_mb(fn, device: str, before=None) -> float:
    """Peak MB of tensors allocated while fn() runs, above the bytes allocated when it began, with before()
    (e.g. dropping the gradients) run first. On CPU the same step's peak has moved by up to 4 % between runs
    (the SFT step at the Vicuna-7B shapes with --grad-ckpt: 954-992 MB): compare ratios across runs with that in
    mind."""
    if before is not None:
        before()
    gc.collect()  # no garbage of an earlier step freed inside this one
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")  # +bytes allocated, -bytes freed
    return max(0, int(np.cumsum([n for _, n in events]).max(initial=0))) / 2**20


def sample_build(scene_dir: str, repeats: int, prefix: str = "", cached: bool = True) -> dict:
    """ms for one training sample from disk (decode included) and, with cached, from a pre-decoded scene
    (Scene.preload): {prefix + "sample_build_with_decode_ms", prefix + "sample_build_ms", prefix +
    "sample_tracks"}. The same frames each time (seed 0)."""
    def from_disk():
        scene = data.load_scene(scene_dir, SAMPLE["size"])
        return data.make_sample(scene, np.random.default_rng(0), **SAMPLE)

    fns = {"disk": from_disk}
    if cached:
        scene = data.load_scene(scene_dir, SAMPLE["size"]).preload()
        fns["cached"] = lambda: data.make_sample(scene, np.random.default_rng(0), **SAMPLE)
    t = median_ms(fns, repeats, "cpu")
    res = {f"{prefix}sample_build_with_decode_ms": t["disk"], f"{prefix}sample_tracks": from_disk()["tracks"].shape[1]}
    return {**res, f"{prefix}sample_build_ms": t["cached"]} if cached else res


def sparse_scene(src: str, out: str, size=None, points_per_frame: int = 100, seed: int = 0) -> str:
    """A scene as DL3DV ships it, with no depth, made from a depths-source scene (exact depth, one pinhole
    K): images_4/ at size (H, W) (None: the source's), the source frames resized per axis (a pinhole camera
    stretched per axis is the pinhole camera diag(sx, sy, 1) K); colmap/sparse/0/*.bin at 4x that size
    (DL3DV's full resolution) with one PINHOLE camera; transforms.json with the same poses (OpenGL axes).
    3D points: `points_per_frame` random pixel centres of every frame unprojected with its depth, observed
    (keypoint = exact projection, at the model's size) in every frame where the depth test passes, kept if
    observed twice, and as many keypoints again with no 3D point, as COLMAP's unmatched features.
    Image ids follow frame order; keypoints are shuffled. -> out."""
    scene, rng = data.load_scene(src), np.random.default_rng(seed)
    if scene.source != "depths" or np.ptp(scene.K, 0).any():
        raise SystemExit(f"--scene {src}: bench builds its sparse scenes from a depths/ scene with one camera "
                         f"(e.g. data/synthetic/train/scene_0000), not a {scene.source} one")
    (h, w), F = scene.size, len(scene)
    H, W = size or scene.size
    depth = np.stack([scene.depth(i) for i in range(F)])  # (F, h, w)
    X = []
    for i in range(F):
        r, c = rng.integers(0, h, points_per_frame), rng.integers(0, w, points_per_frame)
        z = depth[i, r, c]
        uv = np.stack([c + 0.5, r + 0.5], -1)[z > 0]
        X.append(data.cam_to_world(data.unproject(uv, z[z > 0], scene.K[i]), scene.c2w[i]))
    X = np.concatenate(X)  # (P, 3) world points
    uv, z = data.project(data.world_to_cam(X[None], scene.c2w), scene.K)  # (F, P, 2), (F, P) source px
    seen = data.visibility(uv, z, data.lookup_depth(depth, uv), scene.size)  # (F, P)
    X, uv, seen = X[seen.sum(0) >= 2], uv[:, seen.sum(0) >= 2], seen[:, seen.sum(0) >= 2]
    to_model = np.array([4 * W / w, 4 * H / h])  # source px -> model px (model = 4x images_4/)
    K = np.diag([*to_model, 1.0]) @ scene.K[0]
    root, names = Path(out), [Path(f).name for f in scene.image_files]
    keypoints, point_ids = [], []  # per frame: keypoints (n, 2) at the model's size, their point ids (n,)
    for i in tqdm(range(F), desc=f"sparse scene {W}x{H}", leave=False):
        frame = Image.open(scene.image_files[i]).convert("RGB")
        frame = frame if (H, W) == (h, w) else frame.resize((W, H), Image.BILINEAR)
        layout.write_frame(root, names[i], np.asarray(frame), folder="images_4")
        rows = np.flatnonzero(seen[i])
        xy = np.concatenate([uv[i, rows] * to_model, rng.uniform(0, 1, (len(rows), 2)) * [4 * W, 4 * H]])
        pids = np.concatenate([rows + 1, -np.ones(len(rows), np.int64)])  # point id = row + 1; -1 = none
        perm = rng.permutation(len(xy))  # (n,) keypoint order unrelated to point ids
        keypoints.append(xy[perm])
        point_ids.append(pids[perm])
    layout.write_sparse_model(root / data.SPARSE_MODEL, ("PINHOLE", 4 * W, 4 * H, K[[0, 1, 0, 1], [0, 1, 2, 2]]),
                              names, scene.c2w, np.arange(1, F + 1), keypoints, point_ids,
                              {p + 1: x for p, x in enumerate(X)}, (128, 128, 128))
    layout.write_transforms(root, layout.transforms(K, (4 * H, 4 * W), [f"images/{n}" for n in names],
                                                    [layout.gl_to_cv(m) for m in scene.c2w]))
    return str(root)


def loader_rate(root: str, proc, workers: int, items: int = 24, warmup: int = 4) -> float:
    """Samples/s that train.py's input pipeline delivers from the scenes under root, built as train.py builds
    it (train.Items over data.SceneDataset, DataLoader with batch_size=None, its sampler and collate_fn,
    prefetch 4 with workers), with a consumer that takes no time: 16 frames at proc.size, objective full, no
    preload (decode included). Timed over `items` after `warmup` (the workers' start)."""
    cfg = train.Config(frames="16", objective="full")
    geo = data.SceneDataset(root, size=proc.size, num_frames=16, lattices=SAMPLE["lattices"], window=cfg.window, seed=0)
    loader = torch.utils.data.DataLoader(train.Items(cfg, proc, geo, None), batch_size=None,
                                         sampler=train.item_indices(0, warmup + items, 1, 1, 0), num_workers=workers,
                                         collate_fn=train.as_is, prefetch_factor=4 if workers else None)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(items):
        next(it)
    return items / (time.perf_counter() - t)


def data_measures(scene_dir: str, repeats: int) -> dict:
    """The data path's costs (flat keys, see docs/bench.md), on scene_dir and on two sparse-only
    scenes built from it: one at its own size (the same frames as sample_build_ms) and one at 960x540."""
    res = sample_build(scene_dir, repeats)
    assert res["sample_tracks"] == 640, f"{scene_dir}: the sample has {res['sample_tracks']} tracks, the target " \
                                        f"is set for 640"
    tokenizer = M.build_tokenizer("qwen2_5_vl")
    proc = M.Processor(M.tiny_config("qwen2_5_vl", tokenizer), tokenizer, SAMPLE["size"])
    with tempfile.TemporaryDirectory() as tmp:
        res.update(sample_build(sparse_scene(scene_dir, f"{tmp}/sparse"), repeats, "sparse_"))
        wide = sparse_scene(scene_dir, f"{tmp}/960x540/scene", SIZE_960P)
        t = sample_build(wide, repeats, "960x540_", cached=False)
        res.update(sample_960x540_ms=t["960x540_sample_build_with_decode_ms"],
                   sample_960x540_tracks=t["960x540_sample_tracks"])
        for w in (0, 2):
            res[f"loader_samples_per_s_w{w}"] = loader_rate(f"{tmp}/960x540", proc, w)
    return res


def step_measures(sft_step, gasp_step, models, repeats: int, device: str, warmup: int = 2) -> dict:
    """Median time, peak memory and FLOPs of the SFT and the GASP step, and their ratios (GASP / SFT)."""
    def clear():  # no gradients left from an earlier step
        for m in models:
            m.zero_grad(set_to_none=True)

    ts = times_ms({"sft": sft_step, "gasp": gasp_step}, repeats, device, warmup)
    pairs = np.array(ts["gasp"]) / np.array(ts["sft"])  # one ratio per repeat: the two steps ran back to back
    t = {name: statistics.median(v) for name, v in ts.items()}
    res = {}
    for tag, fn in (("sft", sft_step), ("gasp", gasp_step)):
        res[f"{tag}_peak_mb"] = peak_mb(fn, device, clear)
        with FlopCounterMode(display=False) as flops:
            fn()
        res[f"{tag}_gflop"] = flops.get_total_flops() / 1e9
    clear()
    res.update(sft_step_ms=t["sft"], gasp_step_ms=t["gasp"], step_time_ratio=float(np.median(pairs)),
               step_time_ratio_q25=float(np.quantile(pairs, 0.25)), step_time_ratio_q75=float(np.quantile(pairs, 0.75)),
               sft_step_ms_min=min(ts["sft"]), sft_step_ms_max=max(ts["sft"]),
               step_flop_ratio=res["gasp_gflop"] / res["sft_gflop"],
               peak_memory_ratio=res["gasp_peak_mb"] / res["sft_peak_mb"])
    return res


def bench_config(name: str, spec: dict, scene_dir: str, sample_ms: dict, repeats: int) -> dict:
    device = spec["device"]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    torch.manual_seed(0)
    tokenizer = M.build_tokenizer("qwen2_5_vl")
    config = M.tiny_config("qwen2_5_vl", tokenizer, **spec["model"])
    stock = transformers.AutoModelForImageTextToText.from_config(config)
    proc = M.Processor(stock.config, tokenizer, (spec["size"], spec["size"]))
    scene = data.load_scene(scene_dir, proc.size)
    sample = data.make_sample(scene, np.random.default_rng(0), spec["frames"], proc.size, lattices=(8, 24))
    inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT], ["yes"]).items()}
    tmap = proc.token_map(inputs["input_ids"][0], spec["frames"])

    sft = M.freeze_and_lora(stock).to(device).train()
    gasp = M.GASP(M.freeze_and_lora(copy.deepcopy(stock)), r=spec["r"]).to(device).train()

    def sft_step():
        sft.zero_grad(set_to_none=True)
        with amp:
            out = sft(**inputs, use_cache=False)
        out.loss.backward()

    def gasp_step():
        gasp.zero_grad(set_to_none=True)
        with amp:  # as train.py: heads on the frames the pairs read, head + G3-G5 per layer inside the forward
            t = pair_targets(sample, proc.token_px, proc.grid, device=device)
            anchor = int(sample["anchor"])
            out, corr, depth = gasp(inputs, tmap, anchor, loss=partial(gasp_losses, targets=t, q_offset=anchor))
            loss = total_loss(out.loss, corr, depth)
        loss.backward()

    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "threads": torch.get_num_threads(),
           "frames": spec["frames"], "size": spec["size"], "r": spec["r"], "visual_tokens": tmap.numel(),
           "tracks": int(sample["tracks"].shape[1])}
    res.update(step_measures(sft_step, gasp_step, (sft, gasp), repeats, device))

    # Inference: the exported checkpoint, loaded with the stock class and no project code.
    stock.eval()
    plain = {k: v for k, v in inputs.items() if k != "labels"}
    with tempfile.TemporaryDirectory() as out_dir:
        M.export(gasp, proc, out_dir)
        exported = transformers.AutoModelForImageTextToText.from_pretrained(out_dir).to(device).eval()
    assert type(exported) is type(stock), f"export reloads as {type(exported).__name__}, not {type(stock).__name__}"

    def forward(m):
        def stock_forward():
            with torch.no_grad(), amp:
                m(**plain, use_cache=False)
        return stock_forward

    # Two models with identical graphs: the ratio is pure noise, so it gets 4x the repeats (forwards are cheap).
    t = median_ms({"stock": forward(stock), "export": forward(exported)}, 4 * repeats, device)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    res.update(stock_forward_ms=t["stock"], export_forward_ms=t["export"],
               export_forward_ratio=t["export"] / t["stock"], export_param_delta=count(exported) - count(stock))

    res.update(sample_ms, sample_build_fraction=sample_ms["sample_build_with_decode_ms"] / res["gasp_step_ms"])

    # Probe (G8-G10) over 24 consecutive frames vs a no-grad forward; both build their inputs inside.
    psample = data.make_sample(scene, np.random.default_rng(1), 24, proc.size, lattices=(8, 24), contiguous=True)

    def probe_forward():
        with torch.no_grad(), amp:
            stock(**{k: v.to(device) for k, v in proc([psample["frames"]], [M.PROMPT]).items()}, use_cache=False)

    def run_probe():
        with amp:
            probe.run_probe(stock, proc, [psample], None, device=device, desc=f"probe {name}")

    res.update(probe_forward_peak_mb=peak_mb(probe_forward, device), probe_peak_mb=peak_mb(run_probe, device))
    res["probe_memory_ratio"] = res["probe_peak_mb"] / res["probe_forward_peak_mb"]
    return res


# ----------------------------------------------------------------------------- the paper's layer shapes

def build_paper(spec: dict):
    """Random-init stock model of a PAPER config, built on its device in its dtype -> (model, tokenizer)."""
    tokenizer = M.build_tokenizer(spec["kind"])
    config = M.tiny_config(spec["kind"], tokenizer, **spec["model"])
    for sub in ("text", "vision"):  # fields tiny_config has no argument for
        for key, value in spec.get(sub, {}).items():
            setattr(getattr(config, f"{sub}_config"), key, value)
    with torch.device(spec["device"]):
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=spec["dtype"],
                                                                    attn_implementation=spec.get("attn"))
    return model, tokenizer


def tiled_sample(sample: dict, num_frames: int) -> dict:
    """The sample's frames, depths and tracks repeated to num_frames (memory depends on the count, not the
    content); the anchor stays."""
    keys = ("frames", "depth", "tracks", "track_depth", "visible")
    reps = -(-num_frames // len(sample["frames"]))
    return {**sample, **{k: np.concatenate([sample[k]] * reps)[:num_frames] for k in keys}}


def overhead_parts(gasp, tmap: torch.Tensor, anchor: int, targets: dict, seq_len: int, amp, dtype,
                   device: str, repeats: int, grad_ckpt: bool) -> dict:
    """What GASP adds to one step, part by part, each run alone at the step's shapes over all L supervised
    layers (the same calls GASP.forward makes): {"<part>_ms": median ms, "<part>_gflop": GFLOP}.
      capture    the hooks' gather of the visual tokens' pre-rotary q (T_q, H d_h) and k (T_k, H_kv d_h) from
                 the projections' outputs (S, .), and its backward: a scatter of the heads' gradient into a zero
                 (S, .) tensor, added to the projections' gradient. No FLOPs, memory traffic only.
      heads      G1 on both sides (d_q -> 2r -> r, GELU, L2 norm; W1 folded onto the GQA keys), forward and
                 backward (the heads' weights and the q / k gradients that flow into LoRA).
      infonce    G3 (bilinear read of the N tracks, normalize) + G4 over the P = F - 1 frame pairs: (N, N)
                 logits per pair, pairs in chunks under 32 MB, recomputed in PairNLL's backward; forward and backward.
      depth      G5: the (N, T) track x target-token logits of every pair, softmax over the tokens with valid
                 depth, soft-argmax depth; forward and backward (full gasp_losses minus the InfoNCE-only run).
      recompute  one more forward of heads + G3-G5, which backward replays: GASP's own checkpoint around them
                 without --grad-ckpt, the LLM layer's checkpoint with it (then the gather replays too).
    T_q = (F - anchor) h w, T_k = (anchor + 1) h w: only the frames the pairs (anchor, f) read."""
    tc, heads, L = M.text_config(gasp.vlm), gasp.heads, len(gasp.layer_ids)
    Fr, h, w = tmap.shape
    pos_q, pos_k = tmap[anchor:].flatten().to(device), tmap[: anchor + 1].flatten().to(device)
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    q_out = randn(1, seq_len, tc.num_attention_heads * gasp.attn_dim).requires_grad_()  # q_proj's output
    k_out = randn(1, seq_len, tc.num_key_value_heads * gasp.attn_dim).requires_grad_()  # k_proj's output (GQA)
    q, k = q_out[0, pos_q].detach().requires_grad_(), k_out[0, pos_k].detach().requires_grad_()

    def embed(j: int):  # as GASP.forward: layer j -> (1, F - anchor, h, w, r), (1, anchor + 1, h, w, r)
        with amp:
            e_q = heads(q[None], slice(j, j + 1)).view(1, Fr - anchor, h, w, -1)
            e_k = heads(k[None], slice(j, j + 1), gasp.attn_dim).view(1, anchor + 1, h, w, -1)
        return e_q, e_k

    e_q, e_k = (e.detach().requires_grad_() for e in embed(0))
    no_depth = {**targets, "D_b": None}  # gasp_losses then computes L_corr alone

    def capture(backward=True):
        for _ in range(L):
            xq, xk = q_out[0, pos_q], k_out[0, pos_k]
            if backward:
                q_out.grad, k_out.grad = torch.zeros_like(q_out), torch.zeros_like(k_out)  # the attention's share
                torch.autograd.backward([xq, xk], [torch.ones_like(xq), torch.ones_like(xk)])

    def run_heads(backward=True):
        for j in range(L):
            e = embed(j)
            if backward:
                torch.autograd.backward(e, [torch.ones_like(x) for x in e])

    def run_loss(tg, backward=True):
        for _ in range(L):
            with amp:
                corr, depth = gasp_losses(e_q, e_k, tg, TAU, anchor)
                loss = LAMBDA_C * corr.sum() + LAMBDA_D * depth.sum()
            if backward:
                loss.backward()

    def recompute():
        if grad_ckpt:
            capture(backward=False)
        run_heads(backward=False)
        run_loss(targets, backward=False)

    fns = {"capture": capture, "heads": run_heads, "infonce": lambda: run_loss(no_depth),
           "losses": lambda: run_loss(targets), "recompute": recompute}
    t = median_ms(fns, repeats, device)
    res = {}
    for name, fn in fns.items():
        with FlopCounterMode(display=False) as flops:
            fn()
        res[f"{name}_gflop"] = flops.get_total_flops() / 1e9
        res[f"{name}_ms"] = t[name]
    for unit in ("ms", "gflop"):  # the depth loss = full losses - InfoNCE alone
        res[f"depth_{unit}"] = res.pop(f"losses_{unit}") - res[f"infonce_{unit}"]
    return res


def paper_steps(spec: dict, scene_dir: str, layers: int | None = None):
    """A PAPER config's model (with `layers` LLM layers instead of its own, if given), LoRA and heads, and
    steps(num_frames) -> (sft_step, gasp_step, token map, targets, sequence length) on one 336² sample of
    scene_dir tiled to num_frames. One model serves both steps: the SFT step calls the LoRA model directly, where
    GASP's hooks stay idle, so no copy can carry the other side's LoRA. -> (stock, gasp, steps, sample, build s)"""
    device = spec["device"]
    amp = torch.autocast(device, dtype=torch.bfloat16)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    stock, tokenizer = build_paper(spec if layers is None else {**spec, "model": {**spec["model"], "layers": layers}})
    train_vlm = M.freeze_and_lora(stock, spec["lora"])
    gasp = M.GASP(train_vlm, r=spec["r"]).to(device).train()
    proc = M.Processor(stock.config, tokenizer, (spec["size"], spec["size"]))
    build_s = time.perf_counter() - t0
    base = data.make_sample(data.load_scene(scene_dir, proc.size), np.random.default_rng(0), spec["frames"],
                            proc.size, lattices=(8, 24))
    anchor = int(base["anchor"])

    def steps(num_frames: int):
        sample = tiled_sample(base, num_frames)
        inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT], ["yes"]).items()}
        tmap = proc.token_map(inputs["input_ids"][0], num_frames)
        targets = pair_targets(sample, proc.token_px, proc.grid, device=device)
        inputs = M.answer_logits_only(inputs)

        def sft_step():
            gasp.zero_grad(set_to_none=True)
            with amp:
                loss = train_vlm(**inputs, use_cache=False).loss
            loss.backward()

        def gasp_step():
            gasp.zero_grad(set_to_none=True)
            with amp:
                out, corr, depth = gasp(inputs, tmap, anchor,
                                        loss=partial(gasp_losses, targets=targets, tau=TAU, q_offset=anchor))
                loss = total_loss(out.loss, corr, depth, LAMBDA_C, LAMBDA_D)
            del out  # as train.py: the stock output (its vision features) is not held through backward
            loss.backward()
        return sft_step, gasp_step, tmap, targets, inputs["input_ids"].shape[1]
    return stock, gasp, steps, base, build_s


def set_grad_ckpt(stock, on: bool):
    """As train.py --grad-ckpt (non-reentrant activation checkpointing of every LLM layer), or off."""
    if on:
        stock.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        stock.activation_checkpointing_disable()


def bench_paper(name: str, spec: dict, scene_dir: str, repeats: int) -> dict:
    """SFT vs GASP steps at a paper shape, without and with activation checkpointing, plus the parts of the
    difference: {name: ..., name + "+ckpt": ...}. Peak memory is also measured with two more layers, for the
    megabytes each layer adds to either step and the ratio those give at the model's full depth."""
    device, amp = spec["device"], torch.autocast(spec["device"], dtype=torch.bfloat16)
    stock, gasp, steps, base, build_s = paper_steps(spec, scene_dir)
    anchor = int(base["anchor"])
    sft_step, gasp_step, tmap, targets, seq_len = steps(spec["frames"])
    tc = M.text_config(stock)
    L, depth = tc.num_hidden_layers, spec["depth"]
    grad_mb = lambda f: sum(p.numel() * p.element_size() for n, p in gasp.named_parameters()  # noqa: E731
                            if p.requires_grad and f(n)) / 2**20 / L
    shape = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
             "threads": torch.get_num_threads(), "dtype": str(spec["dtype"]).removeprefix("torch."),
             "layers": L, "full_depth": depth, "hidden": tc.hidden_size, "heads": tc.num_attention_heads,
             "kv_heads": tc.num_key_value_heads, "intermediate": tc.intermediate_size, "head_size": gasp.attn_dim,
             "frames": spec["frames"], "size": spec["size"], "visual_tokens": tmap.numel(), "seq_len": seq_len,
             "tracks": int(base["tracks"].shape[1]), "anchor": anchor,
             "r": spec["r"], "lora_rank": spec["lora"],
             "lora_params_m": sum(p.numel() for n, p in gasp.named_parameters() if "lora_" in n) / 1e6,
             "head_params_m": sum(p.numel() for p in gasp.heads.parameters()) / 1e6,
             "lora_grad_mb_per_layer": grad_mb(lambda n: "lora_" in n),
             "head_grad_mb_per_layer": grad_mb(lambda n: n.startswith("heads.")), "build_s": build_s}
    results = {}
    for ckpt in spec["grad_ckpt"]:
        set_grad_ckpt(stock, ckpt)
        tag = name + ("+ckpt" if ckpt else "")
        print(f"{tag}: {L} layers of d {shape['hidden']}, {seq_len} tokens; built in {build_s:.0f} s")
        res = {**shape, "grad_ckpt": ckpt}
        res.update(step_measures(sft_step, gasp_step, (gasp,), repeats, device, warmup=1))
        parts = overhead_parts(gasp, tmap, anchor, targets, seq_len, amp, spec["dtype"], device, 2 * repeats, ckpt)
        for part in PARTS:  # each as a fraction of the SFT step
            res[f"{part}_time_frac"] = parts[f"{part}_ms"] / res["sft_step_ms"]
            res[f"{part}_flop_frac"] = parts[f"{part}_gflop"] / res["sft_gflop"]
        res.update(parts, added_time_frac=res["step_time_ratio"] - 1, added_flop_frac=res["step_flop_ratio"] - 1,
                   parts_time_frac=sum(res[f"{p}_time_frac"] for p in PARTS),
                   parts_flop_frac=sum(res[f"{p}_flop_frac"] for p in PARTS),
                   added_mb_per_layer=(res["gasp_peak_mb"] - res["sft_peak_mb"]) / L)
        print(f"{tag}: step time x{res['step_time_ratio']:.3f}, FLOPs x{res['step_flop_ratio']:.4f}, "
              f"peak memory x{res['peak_memory_ratio']:.4f}")
        if spec.get("max_frames"):
            res.update(max_frames(steps, (gasp,), device))
        results[tag] = res
    if L < depth:  # two more layers: what one more layer adds to each step's peak, then the full-depth ratio
        del stock, gasp, steps, sft_step, gasp_step
        stock, gasp, steps, *_ = paper_steps(spec, scene_dir, L + 2)
        deeper = steps(spec["frames"])[:2]
        for ckpt in spec["grad_ckpt"]:
            set_grad_ckpt(stock, ckpt)
            res = results[name + ("+ckpt" if ckpt else "")]
            for tag, step in zip(("sft", "gasp"), deeper):
                step()  # warm-up
                res[f"{tag}_mb_per_layer"] = (peak_mb(step, device, partial(gasp.zero_grad, set_to_none=True))
                                              - res[f"{tag}_peak_mb"]) / 2
            gasp.zero_grad(set_to_none=True)
            full = {tag: res[f"{tag}_peak_mb"] + (depth - L) * res[f"{tag}_mb_per_layer"] for tag in ("sft", "gasp")}
            res["full_depth_memory_ratio"] = full["gasp"] / full["sft"]
            print(f"{name + ('+ckpt' if ckpt else '')}: one more layer adds {res['sft_mb_per_layer']:.1f} MB (SFT) / "
                  f"{res['gasp_mb_per_layer']:.1f} MB (GASP); at {depth} layers peak memory x"
                  f"{res['full_depth_memory_ratio']:.4f}")
    else:
        for res in results.values():
            res["full_depth_memory_ratio"] = res["peak_memory_ratio"]
    return results


def max_frames(steps, models, device: str, start: int = 16, cap: int = 2048) -> dict:
    """The most frames (to 8) one sample can hold in the GPU's memory for SFT and for GASP: doubling from
    `start` to the first step that runs out of memory (or `cap`), then bisection."""
    def fits(step) -> bool:
        try:
            step()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            for m in models:
                m.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    res = {}
    for i, tag in enumerate(("sft", "gasp")):
        lo, hi = 0, start
        while hi <= cap and fits(steps(hi)[i]):
            lo, hi = hi, 2 * hi
        hi = min(hi, cap + 8)
        while hi - lo > 8:
            mid = (lo + hi) // 16 * 8
            lo, hi = (mid, hi) if fits(steps(mid)[i]) else (lo, mid)
        res[f"{tag}_max_frames"] = lo
        print(f"{tag}: at most {lo} frames")
    res["max_frames_ratio"] = res["gasp_max_frames"] / max(res["sft_max_frames"], 1)
    return res


# ----------------------------------------------------------------------------- DDP and FSDP2: memory per process

def local_mb(tensors) -> float:
    """MB a process holds of these tensors: a DTensor's local shard, a plain tensor whole."""
    return sum((t.to_local() if hasattr(t, "to_local") else t).nbytes for t in tensors) / 2**20


def shard_worker(name: str, spec: dict, scene_dir: str, out: str):
    """Under torchrun (--engine ddp | fsdp2, env RANK set): one GASP training step of a PAPER config with full
    fine-tuning of its LLM (the case FSDP2 is for; LoRA trains ~1-3 % of the weights), measured per process:
    state_mb = weights + AdamW states held before the step, step_mb = the step's peak above that (activations,
    gradients, gathered shards), peak_mb = their sum. Rank 0 writes every rank's numbers to `out`."""
    env = distributed.init(spec["engine"])
    device = env.device if env.device != "cpu" else "cpu"
    spec = {**spec, "device": device}
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    torch.manual_seed(0)
    stock, tokenizer = build_paper(spec)
    if spec.get("grad_ckpt_on"):
        stock.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    gasp = M.GASP(M.freeze_and_lora(stock, 0), r=spec["r"]).to(device).train()
    for q in gasp.parameters():
        if q.requires_grad:
            q.data = q.data.float()  # trained parameters in float32, as train.py
    proc = M.Processor(stock.config, tokenizer, (spec["size"], spec["size"]))
    base = data.make_sample(data.load_scene(scene_dir, proc.size), np.random.default_rng(0), spec["frames"],
                            proc.size, lattices=(8, 24))
    anchor = int(base["anchor"])
    inputs = {k: v.to(device) for k, v in proc([base["frames"]], [M.PROMPT], ["yes"]).items()}
    tmap = proc.token_map(inputs["input_ids"][0], spec["frames"])
    targets = pair_targets(base, proc.token_px, proc.grid, device=device)
    inputs = M.answer_logits_only(inputs)
    model = gasp
    if env.sharded:
        distributed.shard(stock, M.llm_layers(stock), gasp.heads, torch.bfloat16, env, max(gasp.layer_ids))
    elif env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(gasp, find_unused_parameters=True)
    opt = torch.optim.AdamW([q for q in gasp.parameters() if q.requires_grad], lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            out, corr, depth = model(inputs, tmap, anchor, loss=partial(gasp_losses, targets=targets, tau=TAU,
                                                                        q_offset=anchor))
            loss = total_loss(out.loss, corr, depth, LAMBDA_C, LAMBDA_D)
        del out
        loss.backward()
        opt.step()

    step()  # the optimizer's states exist from here on
    opt.zero_grad(set_to_none=True)
    state = local_mb(gasp.parameters()) + local_mb(t for st in opt.state.values() for t in st.values()
                                                   if torch.is_tensor(t))
    step_mb = peak_mb(step, device.split(":")[0])
    mine = dict(rank=env.rank, state_mb=state, step_mb=step_mb, peak_mb=state + step_mb)
    gathered = distributed.gather(mine, env)
    if env.master:
        Path(out).write_text(json.dumps(dict(config=name, engine=spec["engine"], world=env.world, ranks=gathered)))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # Leave without the interpreter's teardown: after the CPU profiler has run in a gloo process, its shutdown aborted
    # now and then ("terminate called without an active exception"), failing a measurement already written.
    sys.stdout.flush()
    os._exit(0)


def bench_sharding(name: str, spec: dict, scene_dir: str, world: int = 2, layers: int | None = None) -> dict:
    """Per-process memory of DDP and FSDP2 at `world` processes (gloo on CPU), full fine-tuning, one GASP step of
    a PAPER config (with `layers` LLM layers instead of its own, if given): runs shard_worker under torchrun for
    each engine."""
    import subprocess
    res = {}
    for engine in distributed.ENGINES:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "shard.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
                   str(distributed.free_port()), __file__, "--configs", name, "--scene", scene_dir, "--shard-worker", engine, "--out", out,
                   *(("--shard-layers", str(layers)) if layers else ())]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{engine} worker failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
            ranks = json.loads(Path(out).read_text())["ranks"]
        for key in ("state_mb", "step_mb", "peak_mb"):
            res[f"{engine}_{key}"] = max(r[key] for r in ranks)
        print(f"{name} {engine} x{world}: " + ", ".join(f"rank {r['rank']} {r['peak_mb']:.0f} MB "
                                                          f"({r['state_mb']:.0f} state + {r['step_mb']:.0f} step)"
                                                          for r in ranks))
    res["fsdp2_over_ddp_peak"] = res["fsdp2_peak_mb"] / res["ddp_peak_mb"]
    res["llm_layers"] = layers or spec["model"]["layers"]
    return {f"{name}+shard{world}": res}


PAPER_TARGETS = [
    ("step_time_ratio", "<= 1.03", lambda v: v <= 1.03, tuple(PAPER)),
    ("peak_memory_ratio", "<= 1.03", lambda v: v <= 1.03, tuple(PAPER)),
    ("full_depth_memory_ratio", "<= 1.03", lambda v: v <= 1.03, tuple(PAPER)),
    ("step_time_ratio_q25", "", None, ()),
    ("step_time_ratio_q75", "", None, ()),
    ("step_flop_ratio", "none (exact)", None, ()),
    *((f"{p}_{u}_frac", "", None, ()) for u in ("time", "flop") for p in (*PARTS, "parts", "added")),
]
PAPER_EXTRA = ("sft_step_ms", "gasp_step_ms", "sft_step_ms_min", "sft_step_ms_max", "sft_gflop", "gasp_gflop",
               "sft_peak_mb", "gasp_peak_mb", "added_mb_per_layer", "sft_mb_per_layer", "gasp_mb_per_layer",
               "lora_grad_mb_per_layer", "head_grad_mb_per_layer", "seq_len")


def report_table(results: dict, targets=TARGETS, extra=("sft_step_ms", "gasp_step_ms", "sft_gflop", "gasp_gflop",
          "sft_peak_mb", "gasp_peak_mb", "stock_forward_ms", "sample_build_with_decode_ms",
          "sparse_sample_build_with_decode_ms", "sample_960x540_ms", "loader_samples_per_s_w0",
          "loader_samples_per_s_w2", "probe_forward_peak_mb", "probe_peak_mb")) -> str:
    """Measures x configs, with each target and whether every config it applies to meets it
    ("paper+ckpt" counts as "paper")."""
    names = list(results)
    rows = [["measure", *names, "target", "ok"]]
    for key, text, check, applies in targets:
        vals = [results[n].get(key, float("nan")) for n in names]
        judged = [check(v) for n, v in zip(names, vals) if n.split("+")[0] in applies]
        rows.append([key, *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in vals), text,
                     ("yes" if all(judged) else "NO") if judged else "-"])
    for key in extra:
        rows.append([key, *(f"{float(results[n].get(key, float('nan'))):.1f}" for n in names), "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,wide" + (",gpu" if torch.cuda.is_available() else ""),
                   help=f"comma-separated, from {', '.join(CONFIGS)} (default: tiny,wide, plus gpu with CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measure, after 2 warm-up runs")
    p.add_argument("--scene", default="", help="scene folder for the data measures and the batch "
                   "(default: data/synthetic/train/scene_0000, rendered if absent)")
    p.add_argument("--out", default="bench.json", help="where to write the results")
    p.add_argument("--sharding", action="store_true", help="with paper configs: instead of the step ratios, the "
                   "per-process memory of DDP and FSDP2 (2 processes on CPU, every GPU on CUDA; full fine-tuning, "
                   "one GASP step each, under torchrun)")
    p.add_argument("--shard-worker", choices=distributed.ENGINES, help=argparse.SUPPRESS)  # set by bench_sharding
    p.add_argument("--shard-layers", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.shard_worker:  # one torchrun process of bench_sharding, or `torchrun ... bench.py --configs paper_gpu
        name = args.configs  # --shard-worker fsdp2` on GPUs
        spec = {**CONFIGS[name], "engine": args.shard_worker, "grad_ckpt_on": True}
        if args.shard_layers:
            spec["model"] = {**spec["model"], "layers": args.shard_layers}
        return shard_worker(name, spec, args.scene, args.out)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    names = args.configs.split(",")
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"--configs: unknown config {n!r}; choose from {', '.join(CONFIGS)}")
        if CONFIGS[n]["device"] == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--configs {n}: needs CUDA, and torch sees no GPU")
    scene = args.scene
    if not scene:
        synth.ensure_synthetic("data/synthetic")
        scene = "data/synthetic/train/scene_0000"
    results = {}
    if any("kind" not in CONFIGS[n] for n in names):
        sample_ms = data_measures(scene, args.repeats)
        print("data: " + ", ".join(f"{k} {v:.1f}" for k, v in sample_ms.items()))
    for n in names:
        if "kind" in CONFIGS[n] and args.sharding:
            # On the CPU one LLM layer of the 7B shape: two DDP processes with full copies of two such layers and
            # their AdamW states do not fit this project's 24 GB machines.
            cpu = CONFIGS[n]["device"] == "cpu"
            world = 2 if cpu else torch.cuda.device_count()
            results.update(bench_sharding(n, CONFIGS[n], scene, world, 1 if cpu and n in PAPER else None))
        elif n in PAPER:
            results.update(bench_paper(n, CONFIGS[n], scene, args.repeats))
        elif "kind" in CONFIGS[n]:
            continue
        else:
            results[n] = bench_config(n, CONFIGS[n], scene, sample_ms, args.repeats)
    shard = {n: r for n, r in results.items() if "+shard" in n}
    paper = {n: r for n, r in results.items() if n.split("+")[0] in PAPER and n not in shard}
    other = {n: r for n, r in results.items() if n not in paper and n not in shard}
    for n, r in shard.items():
        print(f"{n} ({r['llm_layers']} LLM layers): peak MB per process, DDP {r['ddp_peak_mb']:.0f} "
              f"({r['ddp_state_mb']:.0f} weights + AdamW), "
              f"FSDP2 {r['fsdp2_peak_mb']:.0f} ({r['fsdp2_state_mb']:.0f}); ratio {r['fsdp2_over_ddp_peak']:.2f}")
    if paper:
        extra = PAPER_EXTRA + (("sft_max_frames", "gasp_max_frames") if "paper_gpu" in names else ())
        print(report_table(paper, PAPER_TARGETS, extra))
    if other:
        print(report_table(other))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
