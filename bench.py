"""Speed and memory of GASP, as ratios against plain fine-tuning and the stock model (DESIGN.md "Models";
paper claim: the heads are training-only, so inference costs nothing).

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
SFT and GASP run on two copies with equal weights, so GASP's forward hooks never fire in the SFT step.
The sample's decode reads PNGs that the OS has cached after the first repeat (as in a long training run).

Run:
    python bench.py                                   # CPU: tiny and wide, ~1 min on an idle 2-core CPU; bench.json
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
SAMPLE = dict(num_frames=16, size=(336, 336), grids=(8, 24))  # the data-loader target: 640 tracks
# measure, target, check, configs the target applies to (none: reported, not judged)
TARGETS = [
    ("step_time_ratio", "<= 1.10", lambda v: v <= 1.10, ("tiny", "wide", "gpu")),
    ("step_flop_ratio", "none (exact)", None, ()),
    ("peak_memory_ratio", "<= 1.10", lambda v: v <= 1.10, ("tiny", "wide", "gpu")),
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
            out, corr, depth = gasp(inputs, tmap, anchor, loss=partial(gasp_losses, t=t, q_offset=anchor))
            loss = total_loss(out.loss, corr, depth)
        loss.backward()

    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "threads": torch.get_num_threads(),
           "frames": spec["frames"], "size": spec["size"], "r": spec["r"], "visual_tokens": tmap.numel(),
           "tracks": int(sample["tracks"].shape[1])}
    t = median_ms({"sft": sft_step, "gasp": gasp_step}, repeats, device)
    for tag, fn in (("sft", sft_step), ("gasp", gasp_step)):
        for m in (sft, gasp):  # no gradients left from an earlier step
            m.zero_grad(set_to_none=True)
        res[f"{tag}_peak_mb"] = peak_mb(fn, device)
        with FlopCounterMode(display=False) as flops:
            fn()
        res[f"{tag}_gflop"] = flops.get_total_flops() / 1e9
    sft.zero_grad(set_to_none=True)
    gasp.zero_grad(set_to_none=True)
    res.update(sft_step_ms=t["sft"], gasp_step_ms=t["gasp"], step_time_ratio=t["gasp"] / t["sft"],
               step_flop_ratio=res["gasp_gflop"] / res["sft_gflop"],
               peak_memory_ratio=res["gasp_peak_mb"] / res["sft_peak_mb"])

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


def table(results: dict) -> str:
    names = list(results)
    rows = [["measure", *names, "target", "ok"]]
    for key, text, check, applies in TARGETS:
        vals = [results[n][key] for n in names]
        judged = [check(v) for n, v in zip(names, vals) if n in applies]
        rows.append([key, *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in vals), text,
                     ("yes" if all(judged) else "NO") if judged else "-"])
    for key in ("sft_step_ms", "gasp_step_ms", "sft_gflop", "gasp_gflop", "sft_peak_mb", "gasp_peak_mb",
                "stock_forward_ms", "sample_build_with_decode_ms", "probe_forward_peak_mb", "probe_peak_mb"):
        rows.append([key, *(f"{results[n][key]:.1f}" for n in names), "", ""])
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
        data.ensure_synthetic("data/synthetic")
        scene = "data/synthetic/train/scene_0000"
    sample_ms = sample_build(scene, args.repeats)
    results = {n: bench_config(n, CONFIGS[n], scene, sample_ms, args.repeats) for n in names}
    print(table(results))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
