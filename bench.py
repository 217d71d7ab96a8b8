"""Speed and memory of GASP, as ratios against plain fine-tuning and the stock model (DESIGN.md "Models";
paper claim: the heads are training-only, so inference costs nothing).

Where GASP is used, the 7B models ("paper", "paper_llava"; --configs paper,paper_llava), it is judged:
step_time_ratio <= 1.03 and peak_memory_ratio <= 1.03, each without and with activation checkpointing
("+ckpt" rows, train.py --grad-ckpt). "paper" = 2 LLM layers of Qwen2.5-VL-7B (d 3584, 28 heads, 4 KV
heads, d_ff 18944, head 128, M-RoPE [16, 24, 24], θ 1e6), LoRA 128; "paper_llava" = 2 layers of Vicuna-7B
(d 4096, 32 heads, d_ff 11008) in LLaVA-NeXT-Video, 12x12 tokens a frame, LoRA 512. Both: 16 frames at 336²
(144 tokens each), 640 tracks, r 256, every layer supervised, λ_c 0.3, λ_d 1.0, τ 0.07, bf16 weights with LoRA
and heads in float32 under bf16 autocast, a small vision tower and a 512-token vocabulary (so the ratios are
per-layer ratios; the whole model's lm_head and vision tower only add to both steps). One model serves both
steps (the SFT step calls the LoRA model directly, where GASP's hooks stay idle), and L_LM reads the answer's
logits alone (answer_logits_only, the same loss). Their rows add the parts of what GASP adds, each run alone
at the step's shapes and given as a fraction of the SFT step's time and FLOPs (overhead_parts):
  capture    the hooks' gather of the visual q / k and its backward scatter (no FLOPs)
  heads      G1 forward + backward on both sides
  infonce    G3 + G4 forward + backward (an N x N logit matrix per frame pair)
  depth      G5 forward + backward (an N x T logit matrix per frame pair)
  recompute  the forward of heads + G3-G5 that backward replays (GASP's checkpoint, or the LLM layer's)
parts_*_frac sums them; added_*_frac is the measured ratio - 1 (FLOPs: the two agree to the count).
"paper_gpu" (CUDA only) is the whole 28-layer Qwen2.5-VL-7B-shaped model (its vocabulary and vision tower),
random init, bf16, LoRA 128, --grad-ckpt, with the same ratios plus sft_max_frames / gasp_max_frames: the most
frames (to 8) one sample holds in the GPU's memory for each step.
"tiny" and "wide" are reported, not judged against these targets: at d 128-512 GASP's fixed per-layer work
(heads d_q -> 2r -> r, N x N and N x T logits per pair) is not small next to a layer whose cost shrinks as d².

One run measures, per model config, on the same model, batch and device:
  step_time_ratio       GASP step (forward + G3-G7 losses, all layers + backward) ÷ SFT step (L_LM only)
  peak_memory_ratio     the same two steps' peak tensor memory
  step_flop_ratio       the same two steps' FLOPs (torch.utils.flop_counter): no target, immune to CPU noise
  export_forward_ratio  forward of model.export()'s checkpoint, reloaded with the stock class ÷ stock forward
  export_param_delta    exported parameter count − stock parameter count
  sample_build_fraction one 16-frame 336² sample with 640 tracks (load_scene + make_sample, PNG decode
                        included) ÷ the GASP step time; sample_build_ms is the same with frames pre-decoded
  probe_memory_ratio    peak memory of probe.run_probe (native Q-K, 24 frames) ÷ a no-grad forward
Configs (random-init Qwen2.5-VL, model.tiny_config): "tiny" = 4 layers, d 128, 2 heads, 4 frames at 448², r 64
(train.py's demo); "wide" = 8 layers, d 512, 8 heads, 8 frames at 336², r 256; "gpu" = "wide" on CUDA in
bf16 autocast, added when a GPU is present; "wide_r64" (on request) = "wide" with r 64. The batch is one
make_sample() item with 640 tracks (8x8 + 24x24 grids) and a one-word answer, so both steps carry L_LM.
Method: 2 warm-up iterations, then the median of --repeats, SFT and GASP (stock and exported) interleaved
so drift cancels; threads as torch sets them. On a shared CPU, times still move by tens of percent
between runs: read step_time_ratio next to step_flop_ratio, which is exact.
Peak memory = the highest total of tensor bytes allocated while the step runs, above what was allocated
when it began (weights, inputs, heads excluded; gradients, activations, temporaries included): on CUDA
torch.cuda.max_memory_allocated, on CPU the torch profiler's allocation/free events (profile_memory=True)
summed in time order. RSS is not used: the allocator caches freed blocks. The profiler warns that a block
allocated before profiling was freed: Qwen's cached (B, 1) rope_deltas, replaced every forward (bytes).
The probe's forward baseline builds its inputs inside the measured region, as run_probe does.
tiny / wide: SFT and GASP run on two copies with equal weights, so GASP's forward hooks never fire in the
SFT step.
The sample's decode reads PNGs that the OS has cached after the first repeat (as in a long training run).

Run:
    python bench.py                                   # CPU: tiny and wide, ~1 min on an idle 2-core CPU; bench.json
    python bench.py --configs paper,paper_llava       # CPU, 7B layer shapes: 25-40 min on this shared 2-core CPU
    python bench.py --configs paper_gpu               # one GPU: the whole 7B-shaped model, most frames per sample
    python bench.py --configs gpu --repeats 20        # one GPU ("gpu" is also added to the default list with CUDA)
    python bench.py --configs wide,wide_r64           # how the overhead scales with the head size r
No multi-GPU mode: every measure is a ratio on one device.
References: GASP arXiv 2605.30231; torch.profiler memory events (pytorch.org/docs/stable/profiler.html).
"""

import argparse
import copy
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch
import transformers
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import data
import model as M
import probe
import synth
from losses import gasp_losses, pair_targets, total_loss

CONFIGS = {
    "tiny": dict(model={}, frames=4, size=448, r=64, device="cpu"),
    # Assumption: 2 KV heads (GQA 4:1, as Qwen2.5-VL-7B's 28:4 roughly); d_ff = 2d as in every tiny config.
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
    "paper": dict(kind="qwen2_5_vl", model=dict(layers=2, **QWEN_7B), lora=128),
    # LLaVA-NeXT-Video-7B: CLIP at 336 px, 24x24 patches pooled by 2 -> 12x12 tokens a frame.
    "paper_llava": dict(kind="llava_next_video", model=dict(layers=2, **VICUNA_7B), vision=dict(image_size=336),
                        lora=512),
    # The whole model on one GPU: 28 layers, the real vocabulary and vision tower, --grad-ckpt only; plus the
    # most frames a sample can hold.
    "paper_gpu": dict(kind="qwen2_5_vl", model=dict(layers=28, vision_layers=32, vision_hidden=1280, **QWEN_7B),
                      text=dict(vocab_size=152064, max_position_embeddings=128000), vision=QWEN_VISION_7B, lora=128,
                      device="cuda", grad_ckpt=(True,), max_frames=True),
}
for spec in PAPER.values():  # 16 frames at 336² (144 tokens each), 640 tracks, r 256
    for key, value in dict(frames=16, size=336, r=256, device="cpu", dtype=torch.bfloat16,
                           grad_ckpt=(False, True)).items():
        spec.setdefault(key, value)
CONFIGS.update(PAPER)
TAU, LAMBDA_C, LAMBDA_D = 0.07, 0.3, 1.0  # the paper's τ and λ
PARTS = ("capture", "heads", "infonce", "depth", "recompute")
SAMPLE = dict(num_frames=16, size=(336, 336), grids=(8, 24))  # the data-loader target: 640 tracks
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
    ("probe_memory_ratio", "<= 1.5", lambda v: v <= 1.5, ("tiny", "wide", "gpu")),
]


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fns: dict, repeats: int, device: str, warmup: int = 2) -> dict:
    """Median wall time (ms) of each callable, the callables interleaved within every repeat."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(1e3 * (time.perf_counter() - t))
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_mb(fn, device: str) -> float:
    """Peak MB of tensors allocated while fn() runs, above the bytes allocated when it began."""
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


def sample_build(scene_dir: str, repeats: int) -> dict:
    """ms for one training sample from disk (decode included) and from a pre-decoded scene."""
    def from_disk():
        scene = data.load_scene(scene_dir, SAMPLE["size"])
        return data.make_sample(scene, np.random.default_rng(0), **SAMPLE)

    n = from_disk()["tracks"].shape[1]
    assert n == 640, f"{scene_dir}: the sample has {n} tracks, the target is set for 640"
    cached = data.load_scene(scene_dir, SAMPLE["size"]).preload()
    t = median_ms({"disk": from_disk, "cached": lambda: data.make_sample(cached, np.random.default_rng(0), **SAMPLE)},
                  repeats, "cpu")  # the same frames each time (seed 0)
    return {"sample_build_with_decode_ms": t["disk"], "sample_build_ms": t["cached"]}


def step_measures(sft_step, gasp_step, models, repeats: int, device: str, warmup: int = 2) -> dict:
    """Median time, peak memory and FLOPs of the SFT and the GASP step, and their ratios (GASP / SFT)."""
    def clear():  # no gradients left from an earlier step
        for m in models:
            m.zero_grad(set_to_none=True)

    t = median_ms({"sft": sft_step, "gasp": gasp_step}, repeats, device, warmup)
    res = {}
    for tag, fn in (("sft", sft_step), ("gasp", gasp_step)):
        clear()
        res[f"{tag}_peak_mb"] = peak_mb(fn, device)
        with FlopCounterMode(display=False) as flops:
            fn()
        res[f"{tag}_gflop"] = flops.get_total_flops() / 1e9
    clear()
    res.update(sft_step_ms=t["sft"], gasp_step_ms=t["gasp"], step_time_ratio=t["gasp"] / t["sft"],
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
    sample = data.make_sample(scene, np.random.default_rng(0), spec["frames"], proc.size, grids=(8, 24))
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
        def run():
            with torch.no_grad(), amp:
                m(**plain, use_cache=False)
        return run

    # Two models with identical graphs: the ratio is pure noise, so it gets 4x the repeats (forwards are cheap).
    t = median_ms({"stock": forward(stock), "export": forward(exported)}, 4 * repeats, device)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    res.update(stock_forward_ms=t["stock"], export_forward_ms=t["export"],
               export_forward_ratio=t["export"] / t["stock"], export_param_delta=count(exported) - count(stock))

    res.update(sample_ms, sample_build_fraction=sample_ms["sample_build_with_decode_ms"] / res["gasp_step_ms"])

    # Probe (G8-G10) over 24 consecutive frames vs a no-grad forward; both build their inputs inside.
    psample = data.make_sample(scene, np.random.default_rng(1), 24, proc.size, grids=(8, 24), contiguous=True)

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


def answer_logits_only(inputs: dict) -> dict:
    """The same L_LM from the answer's logits alone: labels cut to the positions from the one before the first
    answer token on, logits_to_keep as many (the stock loss shifts by one inside that window). Spares the
    (S, vocab) logits that no label reads (S x 152064 x 4 B = 44 GB at 512 frames)."""
    labels = inputs["labels"]
    keep = labels.shape[1] - int((labels[0] != -100).nonzero()[0]) + 1
    return {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep}


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
      infonce    G3 (bilinear read of the N tracks, normalize) + G4 over the P = F - 1 frame pairs: an (N, N)
                 logit matrix per pair, recomputed in PairNLL's backward; forward and backward.
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
    q_out = randn(1, seq_len, tc.num_attention_heads * gasp.d_head).requires_grad_()  # q_proj's output
    k_out = randn(1, seq_len, tc.num_key_value_heads * gasp.d_head).requires_grad_()  # k_proj's output (GQA)
    q, k = q_out[0, pos_q].detach().requires_grad_(), k_out[0, pos_k].detach().requires_grad_()
    hd = heads.w1.dtype

    def embed(j: int):  # as GASP.forward: layer j -> (1, F - anchor, h, w, r), (1, anchor + 1, h, w, r)
        with amp:
            e_q = heads(q[None].to(hd), slice(j, j + 1)).view(1, Fr - anchor, h, w, -1)
            e_k = heads(k[None].to(hd), slice(j, j + 1), gasp.d_head).view(1, anchor + 1, h, w, -1)
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


def bench_paper(name: str, spec: dict, scene_dir: str, repeats: int) -> dict:
    """SFT vs GASP steps at a paper shape, without and with activation checkpointing, plus the parts of the
    difference: {name: ..., name + "+ckpt": ...}. One model serves both steps: the SFT step calls the LoRA model
    directly, where GASP's hooks stay idle, so no copy can carry the other side's LoRA."""
    device = spec["device"]
    amp = torch.autocast(device, dtype=torch.bfloat16)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    stock, tokenizer = build_paper(spec)
    train_vlm = M.freeze_and_lora(stock, spec["lora"])
    gasp = M.GASP(train_vlm, r=spec["r"]).to(device).train()
    proc = M.Processor(stock.config, tokenizer, (spec["size"], spec["size"]))
    build_s = time.perf_counter() - t0
    base = data.make_sample(data.load_scene(scene_dir, proc.size), np.random.default_rng(0), spec["frames"],
                            proc.size, grids=(8, 24))
    anchor = int(base["anchor"])

    def steps(num_frames: int):
        sample = tiled_sample(base, num_frames)
        inputs = {k: v.to(device) for k, v in proc([sample["frames"]], [M.PROMPT], ["yes"]).items()}
        tmap = proc.token_map(inputs["input_ids"][0], num_frames)
        targets = pair_targets(sample, proc.token_px, proc.grid, device=device)
        inputs = answer_logits_only(inputs)

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
            loss.backward()
        return sft_step, gasp_step, tmap, targets, inputs["input_ids"].shape[1]

    sft_step, gasp_step, tmap, targets, seq_len = steps(spec["frames"])
    tc = M.text_config(stock)
    lora_params = sum(p.numel() for n, p in train_vlm.named_parameters() if "lora_" in n)
    shape = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
             "threads": torch.get_num_threads(), "dtype": str(spec["dtype"]).removeprefix("torch."),
             "layers": tc.num_hidden_layers, "hidden": tc.hidden_size, "heads": tc.num_attention_heads,
             "kv_heads": tc.num_key_value_heads, "intermediate": tc.intermediate_size, "head_size": gasp.d_head,
             "frames": spec["frames"], "size": spec["size"], "visual_tokens": tmap.numel(), "seq_len": seq_len,
             "tracks": int(base["tracks"].shape[1]), "anchor": anchor, "r": spec["r"], "lora_rank": spec["lora"],
             "lora_params_m": lora_params / 1e6, "head_params_m": sum(p.numel() for p in gasp.heads.parameters()) / 1e6,
             "build_s": build_s}
    results = {}
    for ckpt in spec["grad_ckpt"]:
        if ckpt:  # as train.py --grad-ckpt
            stock.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            stock.activation_checkpointing_disable()
        tag = name + ("+ckpt" if ckpt else "")
        print(f"{tag}: {shape['layers']} layers of d {shape['hidden']}, {seq_len} tokens; built in {build_s:.0f} s")
        res = {**shape, "grad_ckpt": ckpt}
        res.update(step_measures(sft_step, gasp_step, (gasp,), repeats, device, warmup=1))
        parts = overhead_parts(gasp, tmap, anchor, targets, seq_len, amp, spec["dtype"], device, 2 * repeats, ckpt)
        for part in PARTS:  # each as a fraction of the SFT step
            res[f"{part}_time_frac"] = parts[f"{part}_ms"] / res["sft_step_ms"]
            res[f"{part}_flop_frac"] = parts[f"{part}_gflop"] / res["sft_gflop"]
        res.update(parts, added_time_frac=res["step_time_ratio"] - 1, added_flop_frac=res["step_flop_ratio"] - 1,
                   parts_time_frac=sum(res[f"{p}_time_frac"] for p in PARTS),
                   parts_flop_frac=sum(res[f"{p}_flop_frac"] for p in PARTS),
                   added_mb_per_layer=(res["gasp_peak_mb"] - res["sft_peak_mb"]) / shape["layers"])
        print(f"{tag}: step time x{res['step_time_ratio']:.3f}, FLOPs x{res['step_flop_ratio']:.4f}, "
              f"peak memory x{res['peak_memory_ratio']:.4f}")
        if spec.get("max_frames"):
            res.update(max_frames(steps, (gasp,), device))
        results[tag] = res
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


PAPER_TARGETS = [
    ("step_time_ratio", "<= 1.03", lambda v: v <= 1.03, tuple(PAPER)),
    ("peak_memory_ratio", "<= 1.03", lambda v: v <= 1.03, tuple(PAPER)),
    ("step_flop_ratio", "none (exact)", None, ()),
    *((f"{p}_{u}_frac", "", None, ()) for u in ("time", "flop") for p in (*PARTS, "parts", "added")),
]
PAPER_EXTRA = ("sft_step_ms", "gasp_step_ms", "sft_gflop", "gasp_gflop", "sft_peak_mb", "gasp_peak_mb",
               "added_mb_per_layer", "seq_len")


def table(results: dict, targets=TARGETS, extra=("sft_step_ms", "gasp_step_ms", "sft_gflop", "gasp_gflop",
          "sft_peak_mb", "gasp_peak_mb", "stock_forward_ms", "sample_build_with_decode_ms", "probe_forward_peak_mb",
          "probe_peak_mb")) -> str:
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
    args = p.parse_args()
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
    if any(n not in PAPER for n in names):
        sample_ms = sample_build(scene, args.repeats)
    for n in names:
        if n in PAPER:
            results.update(bench_paper(n, CONFIGS[n], scene, args.repeats))
        else:
            results[n] = bench_config(n, CONFIGS[n], scene, sample_ms, args.repeats)
    paper = {n: r for n, r in results.items() if n.split("+")[0] in PAPER}
    other = {n: r for n, r in results.items() if n not in paper}
    if paper:
        extra = PAPER_EXTRA + (("sft_max_frames", "gasp_max_frames") if "paper_gpu" in names else ())
        print(table(paper, PAPER_TARGETS, extra))
    if other:
        print(table(other))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
