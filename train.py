"""GASP training (paper §3-4, DESIGN.md G7): a stock VLM + per-layer correspondence heads, trained with
L = L_LM + λ_c L̄_corr + λ_d L̄_depth on DL3DV-layout scenes, interleaved with instruction data.

Run:
    python train.py                                   # embedded default: tiny Qwen2.5-VL, synthetic scenes, CPU
    python train.py --model Qwen/Qwen2.5-VL-7B-Instruct --data /data/dl3dv --sft-data llava_video_178k.json \\
        --lora-rank 128 --grad-ckpt                   # one GPU
    torchrun --nproc_per_node=8 train.py --model Qwen/Qwen2.5-VL-7B-Instruct --data /data/dl3dv \\
        --sft-data llava_video_178k.json --lora-rank 128 --grad-ckpt --accum 16 --steps 10000
Systems by flag: --objective sft (Baseline: L_LM only) | vqa (+DL3DV VQA: tracks as marked-point
multiple-choice questions, L_LM only) | corr (L_corr only, λ_d = 0) | full (GASP); --layers for the
injection-layer ablation; --lora-rank for the rank ablation.
Outputs in --out: log.jsonl, checkpoint.pt (resumable, atomic), export/ (a stock checkpoint).
References: GASP arXiv 2605.30231; nanoGPT train.py (github.com/karpathy/nanoGPT) for the layout.
"""

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import transformers
from PIL import Image, ImageDraw
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import model as M
from losses import gasp_losses, pair_targets, total_loss

TINY = "runs/tiny-qwen2_5_vl"


@dataclass
class Config:
    model: str = dataclasses.field(default="tiny", metadata={"help": "HF id or folder of a stock VLM; 'tiny' = the embedded random-init Qwen2.5-VL"})
    data: str = dataclasses.field(default="data/synthetic/train", metadata={"help": "folder of DL3DV-layout scenes"})
    sft_data: str = dataclasses.field(default="", metadata={"help": "LLaVA-format conversation JSON (LLaVA-Video-178K style)"})
    sft_root: str = dataclasses.field(default="", metadata={"help": "folder the JSON's video/image paths are relative to (default: its folder)"})
    sft_ratio: float = dataclasses.field(default=0.5, metadata={"help": "fraction of items from the instruction stream (paper: 1:1)"})
    out: str = dataclasses.field(default="runs/gasp", metadata={"help": "output folder"})
    objective: str = dataclasses.field(default="full", metadata={"help": "sft | vqa | corr | full"})
    layers: str = dataclasses.field(default="all", metadata={"help": "supervised layers: all | 10-18 | 0,4,8"})
    head_input: str = dataclasses.field(default="qk", metadata={"help": "qk (layer's own q/k, default) | hidden (x_l)"})
    head_dim: int = dataclasses.field(default=256, metadata={"help": "head embedding size r"})
    lora_rank: int = dataclasses.field(default=0, metadata={"help": "LoRA rank on the LLM linears; 0 = full LLM fine-tuning (paper: 128 Qwen, 512 LLaVA)"})
    steps: int = dataclasses.field(default=1000, metadata={"help": "optimizer steps"})
    accum: int = dataclasses.field(default=1, metadata={"help": "micro-steps (one sample each) per optimizer step and process"})
    lr: float = dataclasses.field(default=1e-4, metadata={"help": "peak learning rate"})
    head_lr_mult: float = dataclasses.field(default=4.0, metadata={"help": "heads' lr = lr x this"})
    warmup: float = dataclasses.field(default=0.03, metadata={"help": "warm-up fraction of the cosine schedule"})
    weight_decay: float = dataclasses.field(default=0.0, metadata={"help": "AdamW weight decay"})
    clip: float = dataclasses.field(default=1.0, metadata={"help": "gradient-norm clip"})
    lambda_c: float = dataclasses.field(default=0.3, metadata={"help": "weight of L_corr"})
    lambda_d: float = dataclasses.field(default=1.0, metadata={"help": "weight of L_depth"})
    tau: float = dataclasses.field(default=0.07, metadata={"help": "InfoNCE / soft-argmax temperature"})
    frames: str = dataclasses.field(default="8-24", metadata={"help": "frames per sample: N or MIN-MAX"})
    size: int = dataclasses.field(default=336, metadata={"help": "frame side in px (rounded to whole tokens; LLaVA: CLIP size)"})
    grids: str = dataclasses.field(default="8,24", metadata={"help": "query grids on the anchor frame"})
    window: int = dataclasses.field(default=48, metadata={"help": "frames are drawn from anchor ± window"})
    preload: bool = dataclasses.field(default=False, metadata={"help": "decode all scene frames into memory once (small datasets)"})
    grad_ckpt: bool = dataclasses.field(default=False, metadata={"help": "non-reentrant gradient checkpointing"})
    save_every: int = dataclasses.field(default=200, metadata={"help": "checkpoint interval in steps"})
    log_every: int = dataclasses.field(default=10, metadata={"help": "log interval in steps"})
    max_bad_steps: int = dataclasses.field(default=20, metadata={"help": "stop after this many non-finite losses in a row"})
    probe: bool = dataclasses.field(default=True, metadata={"help": "probe native Q-K matching before and after training"})
    probe_samples: int = dataclasses.field(default=8, metadata={"help": "held-out samples for the probe"})
    probe_scenes: str = dataclasses.field(default="data/synthetic/val", metadata={"help": "held-out scenes for the probe"})
    resume: bool = dataclasses.field(default=False, metadata={"help": "resume from --out/checkpoint.pt"})
    export: bool = dataclasses.field(default=True, metadata={"help": "save the bare VLM to --out/export at the end"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed (data order, init)"})


# Embedded default: settings tuned so a 2-core CPU shows the effect in minutes (the paper's recipe
# stays the default for any real --model). Assumption: these are demo choices, not the paper's. The window
# (±8 frames, not the paper's ±48 DL3DV frames) keeps training pairs near the probe's gaps of 1-7 frames
# (measured: native PCK@2 0.67 vs 0.62 at 1500 steps).
DEMO = dict(steps=2500, lr=1e-3, frames="4", size=448, grids="24", window=8, head_dim=64, log_every=25,
            save_every=200, preload=True)


def parse_args() -> Config:
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag, help_ = "--" + f.name.replace("_", "-"), f.metadata["help"] + f" (default: {f.default})"
        if f.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            p.add_argument(flag, type=f.type, default=None, help=help_)
    given = {k: v for k, v in vars(p.parse_args()).items() if v is not None}
    if given.get("model", "tiny") == "tiny":
        given = {**DEMO, **given}
    cfg = Config(**given)
    assert cfg.objective in ("sft", "vqa", "corr", "full"), f"--objective {cfg.objective!r}: sft | vqa | corr | full"
    return cfg


def int_range(spec: str):
    lo, _, hi = spec.partition("-")
    return (int(lo), int(hi)) if hi else int(lo)


# ----------------------------------------------------------------------------- the +DL3DV VQA baseline

def vqa_item(sample: dict, rng: np.random.Generator):
    """The same tracks as a marked-point multiple-choice question: a red ring on the anchor frame,
    four lettered candidates on another frame, one at the true track position."""
    frames, tracks, vis = sample["frames"].copy(), sample["tracks"], sample["visible"]
    a = int(sample["anchor"])
    others = [f for f in range(len(frames)) if f != a and (vis[a] & vis[f]).sum() >= 4]
    if not others:
        return None
    b = int(rng.choice(others))
    ok = np.nonzero(vis[a] & vis[b])[0]
    picks = rng.choice(ok, size=4, replace=False)  # picks[0] is the true match
    order = rng.permutation(4)
    letters = "ABCD"
    for f, marks in ((a, [(tracks[a, picks[0]], None)]), (b, [(tracks[b, picks[j]], letters[k]) for k, j in enumerate(order)])):
        img = Image.fromarray(frames[f])
        d = ImageDraw.Draw(img)
        for (u, v), label in marks:
            d.ellipse((u - 6, v - 6, u + 6, v + 6), outline=(255, 0, 0), width=3)
            if label:
                d.text((u + 8, v - 8), label, fill=(255, 255, 0))
        frames[f] = np.asarray(img)
    q = (f"{M.PROMPT} The red ring in frame {a + 1} marks a surface point. Which lettered point in frame "
         f"{b + 1} shows the same point? Answer with the option's letter from the given choices directly.")
    return frames, q, letters[int(np.argmax(order == 0))]


# ----------------------------------------------------------------------------- setup

def atomic_save(obj, path: str):
    """torch.save to a temporary file, then rename: a kill mid-save leaves the previous file intact."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def setup(cfg: Config):
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if backend == "nccl" else "cpu"
        if backend == "nccl":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)  # the same init on every rank; data differs by rank through the item index
    return ddp, rank, world, device


def main():
    cfg = parse_args()
    ddp, rank, world, device = setup(cfg)
    master = rank == 0
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.model == "tiny":
        if master:
            M.build_tiny(TINY)
        cfg.model = TINY
    if cfg.data == "data/synthetic/train" and master:
        data.ensure_synthetic("data/synthetic")
    if ddp:
        dist.barrier()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if "cuda" in device else nullcontext()

    # Model: stock VLM, vision tower + projector frozen, LoRA on the LLM if asked, heads unless L_LM only.
    vlm, proc = M.load(cfg.model, size=M.frame_size(transformers.AutoConfig.from_pretrained(cfg.model), cfg.size))
    vlm.train()
    if cfg.grad_ckpt:
        vlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    train_vlm = M.freeze_and_lora(vlm, cfg.lora_rank)
    geometry = cfg.objective in ("corr", "full")
    layers = M.parse_layers(cfg.layers, len(M.llm_layers(vlm)))
    net = M.GASP(train_vlm, layers, cfg.head_input, cfg.head_dim) if geometry else train_vlm
    net.to(device)
    raw = net
    if ddp:
        net = DDP(net, find_unused_parameters=True)  # geometry-only items leave lm_head without gradient

    head_params = list(raw.heads.parameters()) if geometry else []
    head_ids = {id(p) for p in head_params}
    base_params = [p for p in raw.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": base_params, "lr": cfg.lr},
                             {"params": head_params, "lr": cfg.lr * cfg.head_lr_mult}], weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, cfg.steps - warm)))))

    # Data: item k of the whole run is fully determined by (seed, k), so resuming needs only the step.
    geo = data.SceneDataset(cfg.data, size=proc.size, num_frames=int_range(cfg.frames),
                            grids=tuple(int(g) for g in cfg.grids.split(",")), window=cfg.window, seed=cfg.seed,
                            preload=cfg.preload)
    sft = data.InstructionDataset(cfg.sft_data, cfg.sft_root or None, int_range(cfg.frames)) if cfg.sft_data else None
    if cfg.objective == "sft" and sft is None:
        raise SystemExit("--objective sft trains on instruction data only: give --sft-data FILE.json")
    ratio = 1.0 if cfg.objective == "sft" else (cfg.sft_ratio if sft is not None else 0.0)

    def item(k: int):
        """(frames, prompt, answer or None, geometry sample or None) for global item index k."""
        rng = np.random.default_rng([cfg.seed, k])
        if rng.random() < ratio:
            return (*sft[k % len(sft)], None)
        sample = geo[k % len(geo)]
        if cfg.objective == "vqa":
            vqa = vqa_item(sample, rng)
            return (*vqa, None) if vqa else (sample["frames"], M.PROMPT, None, None)
        return sample["frames"], M.PROMPT, None, sample if geometry else None

    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
    start = 0
    if cfg.resume and os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        raw.load_state_dict(ckpt["model"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        start = ckpt["step"]
        if master:
            print(f"resumed from {ckpt_path} at step {start}")

    def save(step: int):
        trainable = {n for n, p in raw.named_parameters() if p.requires_grad}
        state = {"model": {n: t for n, t in raw.state_dict().items() if n in trainable},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                 "step": step, "config": {**dataclasses.asdict(cfg), "size": proc.size[0],
                                            "model": os.path.abspath(cfg.model) if os.path.isdir(cfg.model) else cfg.model}}
        atomic_save(state, ckpt_path)

    probe_set = None
    if cfg.probe and master:
        import probe
        probe_set = probe.probe_samples(cfg.probe_scenes, proc.size, 8, cfg.probe_samples, seed=cfg.seed + 1)
        before = probe.run_probe(vlm.eval(), proc, probe_set, raw if geometry else None, cfg.tau, device, "probe before")
        vlm.train()

    if master:
        print(f"model {cfg.model} | objective {cfg.objective} | layers {len(layers)} | trainable "
              f"{sum(p.numel() for p in raw.parameters() if p.requires_grad) / 1e6:.2f}M | world {world} | device {device}")
    bad, t0, log = 0, time.time(), os.path.join(cfg.out, "log.jsonl")
    for step in range(start, cfg.steps):
        terms = torch.zeros(4, device=device)  # loss, lm, corr, depth (sums over micro-steps)
        for micro in range(cfg.accum):
            k = (step * cfg.accum + micro) * world + rank
            frames, prompt, answer, sample = item(k)
            inputs = {n: v.to(device) for n, v in proc([frames], [prompt], None if answer is None else [answer]).items()}
            if answer is None:
                inputs["logits_to_keep"] = 1  # no L_LM on geometry items: skip the full-vocabulary logits
            sync = nullcontext() if (not ddp or micro == cfg.accum - 1) else net.no_sync()
            with sync, autocast:
                if geometry and sample is not None:  # heads and G3-G5 per layer inside the forward
                    anchor, tmap = int(sample["anchor"]), proc.token_map(inputs["input_ids"][0], len(frames))
                    t = pair_targets(sample, proc.token_px, proc.grid, cfg.objective == "full", device)
                    loss_fn = partial(gasp_losses, t=t, tau=cfg.tau, q_offset=anchor)
                    out, corr, depth = net(inputs, tmap, anchor, loss=loss_fn)
                else:
                    out = net(inputs)[0] if geometry else net(**inputs, use_cache=False)
                    corr = depth = torch.zeros(1, device=device)
                lm = out.loss if answer is not None else torch.zeros((), device=device)
                loss = total_loss(lm, corr, depth, cfg.lambda_c, cfg.lambda_d if cfg.objective == "full" else 0.0)
                (loss / cfg.accum).backward()
            terms += torch.stack([loss, lm, corr.mean(), depth.mean()]).detach() / cfg.accum
        if ddp:
            dist.all_reduce(terms, op=dist.ReduceOp.AVG)
        if not torch.isfinite(terms).all():  # the same decision on every rank
            opt.zero_grad(set_to_none=True)
            bad += 1
            if master:
                print(f"step {step}: non-finite loss {terms.tolist()}, step skipped ({bad} in a row)")
            if bad >= cfg.max_bad_steps:
                raise SystemExit(f"{bad} non-finite losses in a row: lower --lr or check the data (python data.py show)")
            sched.step()
            continue
        bad = 0
        gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if master and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            dt = (time.time() - t0) / (step + 1 - start)
            rec = dict(step=step + 1, loss=terms[0].item(), lm=terms[1].item(), corr=terms[2].item(),
                       depth=terms[3].item(), lr=sched.get_last_lr()[0], grad_norm=float(gnorm), s_per_step=dt,
                       samples_per_s=cfg.accum * world / dt, eta_min=dt * (cfg.steps - step - 1) / 60)
            print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            if master:
                save(step + 1)
            if ddp:
                dist.barrier()

    if master and probe_set is not None:
        after = probe.run_probe(vlm.eval(), proc, probe_set, raw if geometry else None, cfg.tau, device, "probe after")
        results = {"before": before, "after": after}
        with open(os.path.join(cfg.out, "probe.json"), "w") as f:
            json.dump(results, f, indent=1)
        print("\nPCK@2 per layer on held-out scenes (native = the layer's own Q-K attention, head = GASP head)")
        print(probe.table(results))
        for name, r in results.items():
            print(f"{name:>6}: peak native PCK@2 {r['native']['peak_pck2']:.3f} (layer {r['native']['peak_layer']}), "
                  f"rho at peak {r['native']['rho'][r['native']['peak_layer']]:+.2f}")
    if master and cfg.export:
        M.export(raw, proc, os.path.join(cfg.out, "export"))
        print(f"exported a stock checkpoint to {cfg.out}/export")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
