"""GASP training (paper §3-4): a stock VLM + one correspondence head per LLM layer, trained with

    G6  L̄_corr = mean_{l∈Λ} L_corr^l,   L̄_depth = mean_{l∈Λ} L_depth^l      (Λ = --layers)
    G7  L = L_LM + λ_c L̄_corr + λ_d L̄_depth                                   (λ_c = 0.3, λ_d = 1.0)

on DL3DV-layout scenes (data.py), interleaved with instruction data for L_LM. The file reads top to
bottom like nanoGPT's train.py: config -> model -> data -> (probe) -> loop -> (probe) -> export.

Run:
    python train.py                                   # embedded default: tiny Qwen2.5-VL, synthetic scenes, CPU
    python train.py --model Qwen/Qwen2.5-VL-7B-Instruct --data /data/dl3dv --sft-data llava_video_178k.json \\
        --lora-rank 128 --grad-ckpt                   # one GPU
    torchrun --nproc_per_node=8 train.py --model Qwen/Qwen2.5-VL-7B-Instruct --data /data/dl3dv \\
        --sft-data llava_video_178k.json --lora-rank 128 --grad-ckpt --accum 16 --steps 10000     # DDP
    torchrun --nproc_per_node=8 train.py ... --engine fsdp2     # full fine-tuning: FSDP2 shards the model
Systems by flag: --objective sft (Baseline: L_LM only) | vqa (+DL3DV VQA: tracks as marked-point
multiple-choice questions, L_LM only) | corr (L_corr only, λ_d = 0) | full (GASP); --layers for the
injection-layer ablation; --lora-rank for the rank ablation. Ranges (--frames, --layers) are written
A-B and include both ends.
Outputs in --out: config.json (every resolved setting), log.jsonl (one record per logged step),
checkpoint.pt (runtime/checkpoint.py: written atomically, read by `--resume` and by model.load, so probe.py and
eval.py take it), probe.json, export/ (a stock checkpoint, heads dropped). SIGTERM / SIGINT save the step in
progress and exit 128 + signal; the same command with --resume continues.
References: GASP arXiv 2605.30231; nanoGPT train.py (github.com/karpathy/nanoGPT) for the layout.
"""

import argparse
import dataclasses
import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import model as M
from scenes import rooms, synth
import probe
from losses import attention_loss, gasp_losses, pair_targets, total_loss
from runtime import checkpoint, distributed
from runtime.distributed import Env

TINY = "runs/tiny-qwen2_5_vl"
DEMO_DATA = "data/synthetic"
GEOMETRY = ("corr", "full")  # objectives that train the heads


def flag(default, help: str, choices=None, check=None):
    """A Config field: its default, --help text, argparse choices, and a (predicate, message) range check."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "check": check})


POSITIVE, NON_NEGATIVE = (lambda v: v > 0, "must be > 0"), (lambda v: v >= 0, "must be >= 0")
FRACTION = (lambda v: 0 <= v <= 1, "must lie in [0, 1]")


@dataclass
class Config:
    # model
    model: str = flag("tiny", "HF id or folder of a stock VLM; 'tiny' = the embedded random-init Qwen2.5-VL")
    dtype: str = flag("auto", "weights of the frozen parts; trained parameters (LoRA, heads) stay float32 under "
                      "autocast; the export is saved in the base model's dtype (auto: bfloat16 on CUDA, float32 on CPU)",
                      ("auto", "bfloat16", "float16", "float32"))
    attn_implementation: str = flag("sdpa", "attention kernel passed to from_pretrained",
                                    ("sdpa", "eager", "flash_attention_2"))
    # data
    data: str = flag(DEMO_DATA + "/train", "folder of DL3DV-layout scenes (searched recursively)")
    sft_data: str = flag("", "LLaVA-format conversation JSON (LLaVA-Video-178K style) for L_LM")
    sft_root: str = flag("", "folder the JSON's video/image paths are relative to (default: its folder)")
    sft_ratio: float = flag(0.5, "fraction of items drawn from the instruction stream. Assumption: 1:1 is "
                            "our reading; the paper gives no mix", check=FRACTION)
    frames: str = flag("8-24", "frames per sample: N, or A-B drawn uniformly (both ends included)")
    size: int = flag(336, "frame side in px (rounded to whole tokens; LLaVA-NeXT-Video: its CLIP size)", check=POSITIVE)
    lattices: str = flag("8,24", "query points on N x N lattices of the anchor frame, comma-separated N")
    window: int = flag(48, "the other frames are drawn from anchor ± window (original frame numbers)", check=POSITIVE)
    keep_tracks: float = flag(1.0, "fraction of the tracks kept, those visible in the most frames (the VGGT recipe's "
                              "last step keeps 0.5). Assumption: 1, every track", check=(lambda v: 0 < v <= 1, "must lie in (0, 1]"))
    preload: bool = flag(False, "decode all scene frames into memory once (small datasets)")
    workers: int = flag(-1, "DataLoader worker processes (-1: 4 with CUDA, 0 on CPU)",
                        check=(lambda v: v >= -1, "must be >= -1"))
    # method
    objective: str = flag("full", "sft = L_LM only | vqa = tracks as multiple-choice VQA, L_LM only | "
                          "corr = + L_corr | full = + L_corr + L_depth (GASP)", ("sft", "vqa", "corr", "full"))
    layers: str = flag("all", "supervised LLM layers: all | A-B (both ends included) | 0,4,8")
    head_input: str = flag("qk", "what the head reads: qk = the layer's own pre-rotary q/k | hidden = x_l. "
                           "Assumption: qk (the paper says 'Q-K projectors')", ("qk", "hidden"))
    embed_dim: int = flag(256, "r, the heads' embedding size. Assumption: the paper does not give it", check=POSITIVE)
    lambda_c: float = flag(0.3, "λ_c, weight of L_corr", check=NON_NEGATIVE)
    lambda_d: float = flag(1.0, "λ_d, weight of L_depth (objective full)", check=NON_NEGATIVE)
    lambda_attn: float = flag(0.0, "λ_attn, weight of L_attn: each supervised layer's own attention (post-rotary "
                              "q/k, the distribution the probe reads) trained on the same tracks. An extension, not in "
                              "the paper (0 = off, the paper's objective); corr / full only", check=NON_NEGATIVE)
    tau: float = flag(0.07, "τ of InfoNCE and the depth soft-argmax. Assumption: the paper does not give it",
                      check=POSITIVE)
    # optimisation
    lora_rank: int = flag(0, "LoRA rank on the LLM linears; 0 = full fine-tuning of the LLM. The paper uses "
                          "128 (Qwen2.5-VL) and 512 (LLaVA-NeXT-Video): pass it", check=NON_NEGATIVE)
    steps: int = flag(1000, "optimizer steps", check=POSITIVE)
    accum: int = flag(1, "micro-steps (one sample each) per optimizer step and process", check=POSITIVE)
    lr: float = flag(1e-4, "peak learning rate (paper: 1e-4)", check=POSITIVE)
    head_lr_mult: float = flag(4.0, "heads' lr = lr x this (paper: 4)", check=POSITIVE)
    warmup: float = flag(0.03, "warm-up fraction of the cosine schedule. Assumption: 3 %", check=FRACTION)
    weight_decay: float = flag(0.0, "AdamW weight decay. Assumption: 0", check=NON_NEGATIVE)
    clip: float = flag(1.0, "gradient-norm clip", check=POSITIVE)
    grad_ckpt: bool = flag(False, "non-reentrant activation checkpointing of the LLM layers")
    engine: str = flag("ddp", "how torchrun's processes hold the model: ddp = a whole copy each (right for LoRA) | "
                       "fsdp2 = weights, gradients and optimizer states sharded over the processes (PyTorch's "
                       "fully_shard; full fine-tuning of 7B models)", distributed.ENGINES)
    train_vision: bool = flag(False, "also train the vision tower and projector (full fine-tuning only). Assumption: "
                              "frozen, as LLaVA-style fine-tuning keeps them")
    max_bad_steps: int = flag(20, "stop after this many non-finite losses in a row", check=POSITIVE)
    seed: int = flag(0, "seed (data order, init)")
    # bookkeeping
    out: str = flag("runs/gasp", "output folder")
    resume: bool = flag(False, "continue the run in --out from its checkpoint.pt")
    overwrite: bool = flag(False, "start over in an --out that holds a run (its log and checkpoint are removed)")
    save_every: int = flag(200, "checkpoint interval in steps", check=POSITIVE)
    log_every: int = flag(10, "log interval in steps", check=POSITIVE)
    probe: bool = flag(True, "probe native Q-K matching before and after training (needs --probe-scenes)")
    probe_scenes: str = flag("", "held-out DL3DV-layout scene folders for the probe, comma-separated, each "
                             "reported apart (none: the probe is skipped)")
    probe_samples: int = flag(8, "held-out samples for the probe", check=POSITIVE)
    probe_frames: int = flag(8, "consecutive frames per probe sample: frame gaps 1 .. N-1 (the paper's temporal "
                             "analysis reaches 23: 24)", check=(lambda v: v >= 2, "must be >= 2"))
    export: bool = flag(True, "save the bare VLM to --out/export at the end")


# The embedded default (a bare `python train.py`, or --model tiny): settings under which a 2-core CPU shows the
# effect within 15 minutes. Assumption: each is a demo choice, not the paper's (docs/demo.md gives the measurements):
# a +-24-frame window (the paper's +-48 scaled to its 24-frame temporal analysis, which the probe reproduces: 24
# consecutive frames, gaps 1-23), a tiny model with 2 attention heads of 64, r 64, lr 1e-3, 4 frames at 448 px, and
# the tiny model's random vision tower trained (a pretrained tower's features survive a change of view; a random
# one's must learn to). The probe reads two held-out sets: synth.py's generator with other seeds (val), and
# rooms.py, an independent generator never used for a choice.
DEMO = dict(steps=1800, lr=1e-3, frames="4", size=448, lattices="24", window=24, embed_dim=64, train_vision=True,
            log_every=25, save_every=200, preload=True, probe_frames=24,
            probe_scenes=f"{DEMO_DATA}/val,{DEMO_DATA}/rooms")
RESUME_KEYS = ("model", "objective", "layers", "head_input", "embed_dim", "lora_rank", "train_vision", "size", "seed",
               "engine")


def parse_range(spec: str) -> tuple[int, int]:
    """'N' -> (N, N); 'A-B' -> (A, B), both ends included."""
    lo, sep, hi = spec.partition("-")
    lo, hi = int(lo), int(hi) if sep else int(lo)
    if lo > hi:
        raise ValueError(f"{spec!r}: the range's start is above its end")
    return lo, hi


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fields = dataclasses.fields(Config)
    for f in fields:
        default = f"{DEMO[f.name]!r}; {f.default!r} with any other --model" if f.name in DEMO else repr(f.default)
        kw = dict(default=None, help=f"{f.metadata['help']} (default: {default})".replace("%", "%%"))
        if f.type is bool:
            p.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, **kw)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=f.type, choices=f.metadata["choices"], **kw)
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    if given.get("model", "tiny") == "tiny":
        lora = given.get("lora_rank", 0) > 0  # LoRA on the demo model: its vision tower stays frozen
        given = {**{k: v for k, v in DEMO.items() if not (lora and k == "train_vision")}, **given}
    cfg = Config(**given)
    for f in fields:
        check = f.metadata["check"]
        if check and not check[0](getattr(cfg, f.name)):
            p.error(f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}: {check[1]}")
    try:
        if parse_range(cfg.frames)[0] < 2:
            raise ValueError("a sample needs at least 2 frames")
        if not cfg.lattices or any(int(g) <= 0 for g in cfg.lattices.split(",")):
            p.error(f"--lattices {cfg.lattices!r}: comma-separated positive integers, e.g. 8,24")
    except ValueError as e:
        p.error(f"--frames {cfg.frames!r} / --lattices {cfg.lattices!r}: {e}")
    if os.path.isfile(cfg.out):
        p.error(f"--out {cfg.out}: is a file; give a folder")
    if cfg.resume and cfg.overwrite:
        p.error("--resume and --overwrite exclude each other")
    if cfg.objective == "sft" and not cfg.sft_data:
        p.error("--objective sft trains on instruction data only: give --sft-data FILE.json")
    if cfg.lambda_attn and cfg.objective not in GEOMETRY:
        p.error(f"--lambda-attn supervises attention with the tracks: it needs --objective corr or full, not "
                f"{cfg.objective}")
    if cfg.train_vision and cfg.lora_rank:
        p.error("--train-vision trains the whole vision tower: use it with full fine-tuning (--lora-rank 0)")
    if cfg.lambda_attn and cfg.grad_ckpt:
        p.error("--lambda-attn reads q and k inside the attention function, which the LLM's activation checkpointing "
                "recomputes without the reader: drop --grad-ckpt (or --lambda-attn)")
    return cfg


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor at `step`: linear warm-up over `warmup` steps to 1, then a cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ----------------------------------------------------------------------------- the loss of one micro-step (G7)

def step_loss(net, item: dict, cfg: Config, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """G7 for one item: L = L_LM + λ_c L̄_corr + λ_d L̄_depth (+ λ_attn L̄_attn, the extension, 0 by default).
    A geometry item runs every supervised layer's head and G3-G5 inside the one forward (model.GASP); an instruction
    item is the stock forward with L_LM. Returns the loss and its terms (loss, lm, corr, depth, attn), detached."""
    geometry = cfg.objective in GEOMETRY
    zero = torch.zeros(1, device=item["inputs"]["input_ids"].device)
    corr = depth = attn = zero
    if "targets" in item:  # G3-G5 per layer (G6: their mean, below), inside the forward
        corr_depth = partial(gasp_losses, targets=item["targets"], tau=cfg.tau, q_offset=item["anchor"])
        attention = partial(attention_loss, targets=item["targets"], grid=grid,
                            q_offset=item["anchor"]) if cfg.lambda_attn else None
        out, corr, depth, *attn = net(item["inputs"], item["token_map"], item["anchor"], loss=corr_depth,
                                      attention=attention)
        attn = attn[0] if attn else zero
    else:
        out = net(item["inputs"])[0] if geometry else net(**item["inputs"], use_cache=False)
    lm = out.loss if item["lm"] else zero[0]
    del out  # its logits and vision features are not needed in backward
    loss = total_loss(lm, corr, depth, cfg.lambda_c, cfg.lambda_d if cfg.objective == "full" else 0.0)
    loss = loss + cfg.lambda_attn * attn.mean()
    return loss, torch.stack([loss, lm, corr.mean(), depth.mean(), attn.mean()]).detach().float()


TERMS = ("loss", "lm", "corr", "depth", "attn")


# ----------------------------------------------------------------------------- data

def vqa_item(sample: dict, rng: np.random.Generator):
    """The +DL3DV VQA baseline: the same tracks as a marked-point multiple-choice question, a red ring on
    the anchor frame and four lettered candidates on another frame, one at the true track position."""
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


class Items(torch.utils.data.Dataset):
    """Item k of the whole run -> the model's inputs. A pure function of (seed, k): resuming needs only the
    step, and any number of DataLoader workers or processes give the same stream."""

    def __init__(self, cfg: Config, proc, geo, sft):
        self.cfg, self.proc, self.geo, self.sft = cfg, proc, geo, sft
        self.ratio = 1.0 if cfg.objective == "sft" else (cfg.sft_ratio if sft is not None else 0.0)

    def __len__(self):
        return 2**62  # an endless stream; the sampler says which items a process reads

    def __getitem__(self, k: int) -> dict:
        cfg, rng = self.cfg, np.random.default_rng([self.cfg.seed, k])
        sample = None
        if rng.random() < self.ratio:
            frames, prompt, answer = self.sft[k % len(self.sft)]
        else:
            sample = self.geo[k % len(self.geo)]
            frames, prompt, answer = sample["frames"], M.PROMPT, None
            if cfg.objective == "vqa":
                frames, prompt, answer = vqa_item(sample, rng) or (frames, prompt, None)
        inputs = self.proc([frames], [prompt], None if answer is None else [answer])
        if answer is None:
            inputs["logits_to_keep"] = 1  # no L_LM on geometry items: skip the full-vocabulary logits
        else:  # the same L_LM from the answer's logits alone
            inputs = M.answer_logits_only(inputs)
        item = {"inputs": inputs, "lm": answer is not None, "replaced": 0 if sample is None else sample["replaced"]}
        if cfg.objective in GEOMETRY and sample is not None:
            item.update(token_map=self.proc.token_map(inputs["input_ids"][0], len(frames)), anchor=int(sample["anchor"]),
                        targets=pair_targets(sample, self.proc.token_px, self.proc.grid, cfg.objective == "full"))
        return item


def data_stream(cfg: Config, proc) -> Items:
    """The run's item stream: DL3DV-layout scenes (data.SceneDataset) and the instruction stream for L_LM."""
    try:
        geo = data.SceneDataset(cfg.data, size=proc.size, num_frames=parse_range(cfg.frames),
                                lattices=tuple(int(g) for g in cfg.lattices.split(",")), window=cfg.window,
                                seed=cfg.seed, preload=cfg.preload, keep=cfg.keep_tracks)
        sft = data.InstructionDataset(cfg.sft_data, cfg.sft_root or None, parse_range(cfg.frames)) if cfg.sft_data \
            else None
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--data / --sft-data: {e}")
    return Items(cfg, proc, geo, sft)


def report_data(env, geo, replaced: int):
    if env.master and (replaced or geo.skipped["scenes"] or geo.skipped["folders"]):
        print(f"data: {geo.skipped['scenes']} broken scenes and {geo.skipped['folders']} folders without "
              f"transforms.json skipped; {replaced} samples of this process replaced by the next candidate")


def item_indices(start: int, steps: int, accum: int, world: int, rank: int) -> list[int]:
    """The items this process reads, in order: step s, micro-step m -> item (s·accum + m)·world + rank."""
    return [(s * accum + m) * world + rank for s in range(start, steps) for m in range(accum)]


def as_is(item):
    return item


def to_device(x, device: str):
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if torch.is_tensor(x) else x


# ----------------------------------------------------------------------------- processes, the run folder, resume

def setup(cfg: Config) -> Env:
    """This process (runtime.distributed: torchrun's rank and device, or one process); dtype and workers resolved
    for the device."""
    env = distributed.init(cfg.engine)
    torch.manual_seed(cfg.seed)  # the same init on every rank; data differs by rank through the item index
    if cfg.dtype == "auto":
        cfg.dtype = "bfloat16" if "cuda" in env.device else "float32"
    if cfg.workers < 0:
        cfg.workers = 4 if "cuda" in env.device else 0
    if env.device == "cpu":  # subnormal floats (the far tails of a sharp softmax) cost x86 CPUs many cycles each;
        torch.set_flush_denormal(True)  # values below 1e-38 then read as 0
    return env


def demo_setup(cfg: Config, env: Env) -> list[str]:
    """The embedded default's tiny model and scenes, made once if absent; returns the held-out scene folders."""
    if cfg.model == "tiny":
        if env.master:
            M.build_tiny(TINY)
        cfg.model = TINY
    if os.path.isdir(cfg.model):
        cfg.model = os.path.abspath(cfg.model)
    held_out = [p for p in cfg.probe_scenes.split(",") if p] if cfg.probe else []
    if env.master and DEMO_DATA in [os.path.dirname(p) for p in [cfg.data, *held_out]]:
        synth.ensure_synthetic(DEMO_DATA)
    if env.master and f"{DEMO_DATA}/rooms" in held_out:
        rooms.ensure_rooms(f"{DEMO_DATA}/rooms")
    os.makedirs(cfg.out, exist_ok=True)
    env.barrier()
    return held_out


def prepare_out(cfg: Config, env: Env) -> dict | None:
    """Decide what --out holds: the checkpoint to resume from, or None for a fresh run (old records removed)."""
    files = [os.path.join(cfg.out, f) for f in (checkpoint.NAME, "log.jsonl", "probe.json")]
    ckpt = None
    if cfg.resume and os.path.exists(files[0]):
        try:
            ckpt = checkpoint.read(files[0])
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"--resume: {e}")
        check_resume(cfg, ckpt)
    elif cfg.resume and env.master:
        print(f"--resume: no checkpoint at {files[0]}; starting fresh")
    elif any(os.path.exists(f) for f in files[:2]) and not cfg.overwrite:
        raise SystemExit(f"{cfg.out} holds a run (checkpoint.pt / log.jsonl): pass --resume to continue it, "
                         f"--overwrite to start over, or another --out")
    if env.master and ckpt is None:
        for f in files:
            if os.path.exists(f):
                os.remove(f)
    env.barrier()
    return ckpt


def check_resume(cfg: Config, ckpt: dict):
    """--resume continues a run only with the settings that shape its weights and data."""
    saved = ckpt["config"]
    differ = [f"{k}: saved {saved.get(k)!r}, now {getattr(cfg, k)!r}" for k in RESUME_KEYS
              if saved.get(k) != getattr(cfg, k)]
    if differ:
        raise SystemExit(f"--resume: {cfg.out}/checkpoint.pt was trained with other settings: " + "; ".join(differ)
                         + ". Resume with the saved settings (see config.json) or use another --out")


def build(cfg: Config, env: Env):
    """The stock model, vision tower and projector frozen (unless --train-vision), LoRA on the LLM if asked, the
    heads unless the objective is L_LM only (model.build). Records the frame side actually fed."""
    try:
        vlm, proc, net = M.build(cfg.model, env.device, cfg.dtype, cfg.attn_implementation, cfg.size, cfg.layers,
                                 cfg.lora_rank, cfg.train_vision, cfg.objective in GEOMETRY, cfg.head_input,
                                 cfg.embed_dim, cfg.grad_ckpt)
    except ValueError as e:
        raise SystemExit(f"--model {cfg.model} / --layers {cfg.layers}: {e}")
    cfg.size = proc.size[0]
    return vlm, proc, net


def optimizer(cfg: Config, net):
    """AdamW with two groups: the heads at lr x head_lr_mult (the paper: 4x), everything else trained at lr;
    linear warm-up, then a cosine to 0."""
    heads = list(net.heads.parameters()) if isinstance(net, M.GASP) else []
    ids = {id(p) for p in heads}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.AdamW([{"params": rest, "lr": cfg.lr}, {"params": heads, "lr": cfg.lr * cfg.head_lr_mult}],
                            weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup * cfg.steps))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, warmup=warmup, total=cfg.steps))


def restore(cfg: Config, env: Env, ckpt: dict | None, net) -> tuple[int, dict | None]:
    """Continue from a checkpoint: the trained weights (before any sharding) and the RNG; the log keeps the steps
    the checkpoint covers. Returns (first step, the stored 'before' probe). The optimizer follows in parallel()."""
    if ckpt is None:
        return 0, None
    checkpoint.restore_weights(net, ckpt["weights"], f"{cfg.out}/{checkpoint.NAME}")
    torch.set_rng_state(ckpt["rng"])
    if env.master:
        truncate_log(os.path.join(cfg.out, "log.jsonl"), ckpt["step"])
        print(f"resumed from {cfg.out}/{checkpoint.NAME} at step {ckpt['step']}")
    return ckpt["step"], ckpt["probe_before"]


def parallel(cfg: Config, env: Env, vlm, net, ckpt: dict | None):
    """Spread the model over torchrun's processes (DDP, or FSDP2 in place), then build the optimizer on what each
    process holds and restore its state. Returns (the module to call, optimizer, schedule)."""
    if env.sharded:
        heads, top = (net.heads, max(net.layer_ids)) if isinstance(net, M.GASP) else (None, None)
        distributed.shard(vlm, M.llm_layers(vlm), heads, getattr(torch, cfg.dtype), env, top)
    opt, sched = optimizer(cfg, net)
    if ckpt is not None:
        distributed.load_optimizer(net, opt, ckpt["optimizer"], env)
        sched.load_state_dict(ckpt["scheduler"])
    if env.distributed and not env.sharded:  # geometry-only items leave lm_head without gradient
        return DDP(net, find_unused_parameters=True), opt, sched
    return net, opt, sched


def truncate_log(path: str, step: int):
    """Keep the records of steps <= step: the steps after the checkpoint are trained (and logged) again."""
    if os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def save(cfg: Config, env: Env, net, opt, sched, step: int, probe_before):
    """checkpoint.pt (runtime/checkpoint.py): whole tensors whatever the engine, written by rank 0."""
    state, optim = distributed.full_state(net, opt, env)
    if env.master:
        checkpoint.save(os.path.join(cfg.out, checkpoint.NAME), config=dataclasses.asdict(cfg), step=step,
                        weights=checkpoint.trained_weights(net, state), optimizer=optim,
                        scheduler=sched.state_dict(), rng=torch.get_rng_state(), probe_before=probe_before)
    env.barrier()


def export(cfg: Config, env: Env, net, proc):
    """The stock checkpoint (model.export). Sharded weights are first made whole: rank 0 rebuilds the model on the
    CPU from the final checkpoint."""
    if env.master and cfg.export:
        if env.sharded:
            _, proc, net = M.rebuild(checkpoint.read(cfg.out), cfg.out)
        M.export(net, proc, os.path.join(cfg.out, "export"))
        print(f"exported a stock checkpoint to {cfg.out}/export")
    env.barrier()


class Preemption:
    """SIGTERM (Slurm, Kubernetes) and SIGINT ask the loop to stop after the optimizer step it is in: the run saves
    a checkpoint and exits non-zero, and `--resume` continues it exactly. All ranks stop at the same step."""

    def __init__(self):
        self.signal = 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.signal:  # asked twice (or torchrun ending the job after a failed rank): stop now
            raise SystemExit(128 + signum)
        self.signal = signum

    def requested(self, env: Env) -> int:
        flag = torch.tensor([self.signal])
        if env.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)


def write_config(cfg: Config, env: Env, net, geo):
    """config.json: every resolved setting, printed too."""
    if not env.master:
        return
    resolved = {**dataclasses.asdict(cfg), "world": env.world, "global_batch": cfg.accum * env.world,
                "device": env.device}
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(resolved, f, indent=1)
    print("config: " + ", ".join(f"{k}={v}" for k, v in resolved.items()))
    layers = len(net.layer_ids) if isinstance(net, M.GASP) else 0
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6
    print(f"model {cfg.model} | objective {cfg.objective} | supervised layers {layers} | trainable {trainable:.2f}M "
          f"| global batch {cfg.accum * env.world} = {cfg.accum} micro-steps x {env.world} processes x 1 sample | "
          f"{len(geo.scenes)} scenes")


def skip_step(cfg: Config, env, step: int, terms: torch.Tensor, opt, sched, bad: int) -> int:
    """A non-finite loss: the step's gradients are dropped (the same decision on every rank); too many in a row end
    the run. Returns the count in a row."""
    opt.zero_grad(set_to_none=True)
    sched.step()
    if env.master:
        print(f"step {step}: non-finite loss {terms.tolist()}, step skipped ({bad} in a row)")
    if bad >= cfg.max_bad_steps:
        raise SystemExit(f"{bad} non-finite losses in a row: lower --lr or check the data (python data.py show)")
    return bad


def log_step(cfg: Config, env: Env, step: int, start: int, terms: torch.Tensor, sched, gnorm, t0: float):
    """One line per --log-every steps: the loss terms, lr, gradient norm, s/step, samples/s, ETA; also log.jsonl."""
    if not env.master or ((step + 1) % cfg.log_every and step + 1 != cfg.steps):
        return
    dt = (time.time() - t0) / (step + 1 - start)
    rec = dict(step=step + 1, **{k: v.item() for k, v in zip(TERMS, terms) if k != "attn" or cfg.lambda_attn},
               lr=sched.get_last_lr()[0], grad_norm=float(gnorm), s_per_step=dt,
               samples_per_s=cfg.accum * env.world / dt, eta_min=dt * (cfg.steps - step - 1) / 60)
    print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()), flush=True)
    with open(os.path.join(cfg.out, "log.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------- the probe before and after

def probe_sets(cfg: Config, env, proc, held_out: list[str]) -> dict:
    """{held-out folder: probe samples} on rank 0 (the probe runs there alone; on every rank under FSDP2, whose
    forward needs them all); empty without --probe-scenes."""
    if not (cfg.probe and (env.master or env.sharded)):
        return {}
    if not held_out and env.master:
        print("probe skipped: give --probe-scenes DIR (held-out DL3DV-layout scenes) to measure the layers' own "
              "Q-K matching before and after training")
    return {p: probe.probe_samples(p, proc.size, cfg.probe_frames, cfg.probe_samples, seed=cfg.seed + 1)
            for p in held_out}


def probe_all(cfg: Config, vlm, proc, gasp, sets: dict, autocast, device: str, when: str) -> dict:
    """probe.run_probe on every held-out set: {folder: results}."""
    out = {}
    for folder, samples in sets.items():
        with autocast:
            out[folder] = probe.run_probe(vlm.eval(), proc, samples, gasp, cfg.tau, device, f"probe {when} ({folder})")
    vlm.train()
    return out


def report(cfg: Config, env: Env, before: dict | None, after: dict):
    """probe.json, and the before/after table of each held-out set with its summary lines (rank 0)."""
    if not env.master:
        return
    results = {p: ({"before": before[p]} if before and p in before else {}) | {"after": a} for p, a in after.items()}
    with open(os.path.join(cfg.out, "probe.json"), "w") as f:
        json.dump(results, f, indent=1)
    for folder, res in results.items():
        print(f"\nheld-out scenes {folder}")
        print(probe.pck_table(res))
        for name, r in res.items():
            n = r["native"]
            peak, t = n["peak_layer"], n["temporal"][n["peak_layer"]]
            auroc = "-" if n["auroc"][peak] is None else f"{n['auroc'][peak]:.2f}"
            print(f"{name:>6}: peak native PCK@2 {n['peak_pck2']:.3f} (layer {peak}), rho at peak {n['rho'][peak]:+.2f} "
                  f"(per sample {n['rho_seq_mean'][peak]:+.2f} +- {n['rho_seq_std'][peak]:.2f}), AUROC {auroc}, "
                  f"Y({max(t)}) {t[max(t)]:.2f}")
        static = res["after"]["static"]["by_gap"]
        print(f"zero-motion reference (each query's own token): PCK@2 {static[min(static)]:.2f} at dt {min(static)}, "
              f"{static[max(static)]:.2f} at dt {max(static)}")


# ----------------------------------------------------------------------------- main

def main(argv=None):
    cfg = parse_args(argv)
    env = setup(cfg)
    held_out = demo_setup(cfg, env)
    ckpt = prepare_out(cfg, env)
    vlm, proc, net = build(cfg, env)
    start, probe_before = restore(cfg, env, ckpt, net)
    model, opt, sched = parallel(cfg, env, vlm, net, ckpt)
    items = data_stream(cfg, proc)
    write_config(cfg, env, net, items.geo)
    gasp = net if isinstance(net, M.GASP) else None
    dtype, device_type = getattr(torch, cfg.dtype), env.device.split(":")[0]
    autocast = torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)

    sets = probe_sets(cfg, env, proc, held_out)
    if sets and probe_before is None and start == 0:
        probe_before = probe_all(cfg, vlm, proc, gasp, sets, autocast, env.device, "before")
    vlm.train()
    loader = torch.utils.data.DataLoader(items, batch_size=None, collate_fn=as_is, num_workers=cfg.workers,
                                         sampler=item_indices(start, cfg.steps, cfg.accum, env.world, env.rank),
                                         pin_memory="cuda" in env.device, prefetch_factor=4 if cfg.workers else None)
    batches, bad, replaced, t0, preemption = iter(loader), 0, 0, time.time(), Preemption()
    for step in range(start, cfg.steps):
        terms = torch.zeros(len(TERMS), device=env.device)  # means over the micro-steps
        for micro in range(cfg.accum):
            item = to_device(next(batches), env.device)
            replaced += item["replaced"]  # unusable scene samples the dataset replaced by the next candidate
            with distributed.gradient_sync(model, env, micro == cfg.accum - 1):
                with autocast:
                    loss, parts = step_loss(model, item, cfg, proc.grid)
                scaler.scale(loss / cfg.accum).backward()
            terms += parts / cfg.accum
        if env.distributed:
            dist.all_reduce(terms, op=dist.ReduceOp.AVG)
        if not torch.isfinite(terms).all():  # the same decision on every rank
            bad = skip_step(cfg, env, step, terms, opt, sched, bad + 1)
            continue
        bad = 0
        scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log_step(cfg, env, step, start, terms, sched, gnorm, t0)
        stop = preemption.requested(env)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or stop:
            save(cfg, env, net, opt, sched, step + 1, probe_before)
        if stop:
            if env.master:
                print(f"stopped by signal {stop} after step {step + 1}; checkpoint saved: rerun the same command "
                      f"with --resume to continue", flush=True)
            raise SystemExit(128 + stop)
    report_data(env, items.geo, replaced)
    if sets:
        after = probe_all(cfg, vlm, proc, gasp, sets, autocast, env.device, "after")
        report(cfg, env, probe_before, after)
    export(cfg, env, net, proc)
    if env.distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
