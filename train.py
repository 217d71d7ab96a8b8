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
        --sft-data llava_video_178k.json --lora-rank 128 --grad-ckpt --accum 16 --steps 10000
Systems by flag: --objective sft (Baseline: L_LM only) | vqa (+DL3DV VQA: tracks as marked-point
multiple-choice questions, L_LM only) | corr (L_corr only, λ_d = 0) | full (GASP); --layers for the
injection-layer ablation; --lora-rank for the rank ablation. Ranges (--frames, --layers) are written
A-B and include both ends.
Outputs in --out: config.json (every resolved setting), log.jsonl (one record per logged step),
checkpoint.pt (resumable, written atomically; its format is `save_checkpoint`, read back by
`load_checkpoint`, which probe.py uses), probe.json, export/ (a stock checkpoint, heads dropped).
References: GASP arXiv 2605.30231; nanoGPT train.py (github.com/karpathy/nanoGPT) for the layout.
"""

import argparse
import dataclasses
import json
import math
import os
import pickle
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
from scenes import rooms, synth
from losses import gasp_losses, native_loss, pair_targets, total_loss

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
    grids: str = flag("8,24", "query-point grids on the anchor frame, comma-separated")
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
    lambda_n: float = flag(0.0, "λ_n, weight of L_native: each supervised layer's own attention (post-rotary q/k, "
                           "the probe's distribution) trained on the same tracks. An extension, not in the paper "
                           "(0 = off, the paper's objective); corr / full only", check=NON_NEGATIVE)
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
    export: bool = flag(True, "save the bare VLM to --out/export at the end")


# The embedded default (a bare `python train.py`, or --model tiny): settings under which a 2-core CPU shows
# the effect in ~12 minutes. Assumption: these are demo choices, not the paper's. The window (±8 frames, not
# ±48) keeps training pairs near the probe's gaps of 1-7 frames (measured: native PCK@2 0.67 vs 0.62 at 1500 steps).
# The probe reads two held-out sets: synth.py's generator with other seeds (val), and rooms.py, an independent
# generator (other geometry, textures, lighting, translating cameras) never used for a tuning choice.
# The tiny model's vision tower is random: the demo trains it (a pretrained tower's features already survive a
# change of view; a random one's do not: native PCK@2 0.80 -> 0.93 on val, Y(7) 0.75 -> 0.88, measured).
# 1800 steps, not 2000, keep the run inside 15 minutes on a slow day (0.32-0.44 s a step seen on the same CPU);
# val measured 0.927 / rho +0.28 / Y 0.88 at 1800 against 0.924 / +0.26 / 0.88 at 2000.
DEMO = dict(steps=1800, lr=1e-3, frames="4", size=448, grids="24", window=8, embed_dim=64, train_vision=True,
            log_every=25, save_every=200, preload=True, probe_scenes=f"{DEMO_DATA}/val,{DEMO_DATA}/rooms")
RESUME_KEYS = ("model", "objective", "layers", "head_input", "embed_dim", "lora_rank", "train_vision", "size", "seed")
CKPT_FORMAT = 1


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
        if not cfg.grids or any(int(g) <= 0 for g in cfg.grids.split(",")):
            p.error(f"--grids {cfg.grids!r}: comma-separated positive integers, e.g. 8,24")
    except ValueError as e:
        p.error(f"--frames {cfg.frames!r} / --grids {cfg.grids!r}: {e}")
    if os.path.isfile(cfg.out):
        p.error(f"--out {cfg.out}: is a file; give a folder")
    if cfg.resume and cfg.overwrite:
        p.error("--resume and --overwrite exclude each other")
    if cfg.objective == "sft" and not cfg.sft_data:
        p.error("--objective sft trains on instruction data only: give --sft-data FILE.json")
    if cfg.lambda_n and cfg.objective not in GEOMETRY:
        p.error(f"--lambda-n supervises attention with the tracks: it needs --objective corr or full, not {cfg.objective}")
    if cfg.train_vision and cfg.lora_rank:
        p.error("--train-vision trains the whole vision tower: use it with full fine-tuning (--lora-rank 0)")
    if cfg.lambda_n and cfg.grad_ckpt:
        p.error("--lambda-n reads q and k inside the attention function, which the LLM's activation checkpointing "
                "recomputes without the reader: drop --grad-ckpt (or --lambda-n)")
    return cfg


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor at `step`: linear warm-up over `warmup` steps to 1, then a cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ----------------------------------------------------------------------------- model and checkpoints

def build_model(cfg: Config, device: str):
    """The model as training builds it -> (vlm, processor, net). vlm: the stock model (LoRA injected in place);
    net: what the optimiser trains, the GASP wrapper for the geometry objectives, else the (peft) VLM.
    Frozen weights in cfg.dtype; trained parameters in float32 (mixed precision, autocast in the loop)."""
    dtype = getattr(torch, cfg.dtype)
    vlm, proc = M.load(cfg.model, dtype=dtype, attn_implementation=cfg.attn_implementation,
                       size=M.frame_size(transformers.AutoConfig.from_pretrained(cfg.model), cfg.size))
    layers = M.parse_layers(cfg.layers, len(M.llm_layers(vlm)))
    if cfg.grad_ckpt:
        vlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    net = M.freeze_and_lora(vlm, cfg.lora_rank, cfg.train_vision)
    if cfg.objective in GEOMETRY:
        net = M.GASP(net, layers, cfg.head_input, cfg.embed_dim)
    for p in net.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return vlm, proc, net.to(device)


def atomic_save(obj, path: str):
    """torch.save to a temporary file, then rename: a kill mid-save leaves the previous file intact."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str, net, opt, sched, step: int, cfg: Config, probe_before):
    """checkpoint.pt, the one format train.py writes and load_checkpoint reads:
    format (int), config (the resolved Config as a dict: model path, objective, layers, head_input, embed_dim = r,
    lora_rank, tau, size, dtype, ...), step (optimizer steps done), model (the trained parameters of `net`, by
    their names in build_model's net), optimizer, scheduler, rng (torch CPU RNG state), probe_before (probe
    results of the untrained model, or None)."""
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    atomic_save({"format": CKPT_FORMAT, "config": dataclasses.asdict(cfg), "step": step,
                 "model": {n: t for n, t in net.state_dict().items() if n in trained},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                 "probe_before": probe_before}, path)


def read_checkpoint(path: str) -> dict:
    """A checkpoint.pt (or a run folder holding one) -> its dict, with named errors for missing or broken files."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no training checkpoint here (train.py writes --out/checkpoint.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"{path}: not a readable checkpoint, perhaps truncated ({e}); train.py writes it "
                         f"atomically, so rerun or restore the file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or not {"config", "model", "step"} <= ckpt.keys():
        raise ValueError(f"{path}: not a train.py checkpoint of format {CKPT_FORMAT}")
    return ckpt


def load_trained(net, state: dict, where: str):
    """Copy the saved trained parameters into net, refusing any that do not fit it."""
    own = dict(net.named_parameters())
    unknown = [n for n in state if n not in own or own[n].shape != state[n].shape]
    missing = [n for n, p in own.items() if p.requires_grad and n not in state]
    if unknown or missing:
        raise ValueError(f"{where}: the saved weights do not fit the model rebuilt from its config "
                         f"({len(unknown)} unknown or reshaped, e.g. {unknown[:2]}; {len(missing)} missing, "
                         f"e.g. {missing[:2]})")
    net.load_state_dict(state, strict=False)


def load_checkpoint(path: str, device: str = "cpu", dtype: str | None = None, attn_implementation: str | None = None):
    """A train.py checkpoint (any objective, LoRA or not) -> (vlm, processor, GASP module or None, config dict),
    rebuilt exactly as training built it (build_model) with the trained weights loaded, in eval mode;
    dtype / attn_implementation, when given, replace the saved ones."""
    ckpt = read_checkpoint(path)
    saved = ckpt["config"]
    cfg = Config(**{f.name: saved[f.name] for f in dataclasses.fields(Config) if f.name in saved})
    cfg.grad_ckpt, cfg.dtype = False, dtype or cfg.dtype
    cfg.attn_implementation = attn_implementation or cfg.attn_implementation
    vlm, proc, net = build_model(cfg, device)
    load_trained(net, ckpt["model"], path)
    return (vlm.eval(), proc, net.eval() if isinstance(net, M.GASP) else None,
            {**saved, "dtype": cfg.dtype, "attn_implementation": cfg.attn_implementation})


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


def item_indices(start: int, steps: int, accum: int, world: int, rank: int) -> list[int]:
    """The items this process reads, in order: step s, micro-step m -> item (s·accum + m)·world + rank."""
    return [(s * accum + m) * world + rank for s in range(start, steps) for m in range(accum)]


def as_is(item):
    return item


def to_device(x, device: str):
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if torch.is_tensor(x) else x


# ----------------------------------------------------------------------------- setup

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


def prepare_out(cfg: Config, master: bool) -> dict | None:
    """Decide what --out holds: the checkpoint to resume from, or None for a fresh run (old records removed)."""
    files = [os.path.join(cfg.out, f) for f in ("checkpoint.pt", "log.jsonl", "probe.json")]
    if cfg.resume and os.path.exists(files[0]):
        return read_checkpoint(files[0])
    if cfg.resume and master:
        print(f"--resume: no checkpoint at {files[0]}; starting fresh")
    elif any(os.path.exists(f) for f in files[:2]) and not cfg.overwrite:
        raise SystemExit(f"{cfg.out} holds a run (checkpoint.pt / log.jsonl): pass --resume to continue it, "
                         f"--overwrite to start over, or another --out")
    if master:
        for f in files:
            if os.path.exists(f):
                os.remove(f)
    return None


def truncate_log(path: str, step: int):
    """Keep the records of steps <= step: the steps after the checkpoint are trained (and logged) again."""
    if os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def main(argv=None):
    cfg = parse_args(argv)
    ddp, rank, world, device = setup(cfg)
    master = rank == 0
    if cfg.dtype == "auto":
        cfg.dtype = "bfloat16" if "cuda" in device else "float32"
    if cfg.workers < 0:
        cfg.workers = 4 if "cuda" in device else 0
    if device == "cpu":  # subnormal floats (the far tails of a sharp softmax) cost x86 CPUs many cycles each:
        torch.set_flush_denormal(True)  # measured 1.9x per step late in a --lambda-n run; values < 1e-38 read as 0
    if cfg.model == "tiny":
        if master:
            M.build_tiny(TINY)
        cfg.model = TINY
    if os.path.isdir(cfg.model):
        cfg.model = os.path.abspath(cfg.model)
    held_out = [p for p in cfg.probe_scenes.split(",") if p] if cfg.probe else []
    if master and DEMO_DATA in [os.path.dirname(p) for p in [cfg.data, *held_out]]:
        synth.ensure_synthetic(DEMO_DATA)  # the embedded default's scenes, rendered once
    if master and f"{DEMO_DATA}/rooms" in held_out:
        rooms.ensure_rooms(f"{DEMO_DATA}/rooms")
    os.makedirs(cfg.out, exist_ok=True)
    if ddp:
        dist.barrier()
    try:
        ckpt = prepare_out(cfg, master)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--resume: {e}")
    if ddp:
        dist.barrier()

    # Model: stock VLM, vision tower + projector frozen, LoRA on the LLM if asked, heads unless L_LM only.
    try:
        vlm, proc, raw = build_model(cfg, device)
    except ValueError as e:
        raise SystemExit(f"--model {cfg.model} / --layers {cfg.layers}: {e}")
    cfg.size = proc.size[0]  # the frame side actually fed (whole tokens)
    if ckpt is not None:
        saved = {k: ckpt["config"].get(k, getattr(Config, k)) for k in RESUME_KEYS}  # older runs: the default
        differ = [f"{k}: saved {saved[k]!r}, now {getattr(cfg, k)!r}" for k in RESUME_KEYS if saved[k] != getattr(cfg, k)]
        if differ:
            raise SystemExit(f"--resume: {cfg.out}/checkpoint.pt was trained with other settings: " + "; ".join(differ)
                             + ". Resume with the saved settings (see config.json) or use another --out")
    geometry = cfg.objective in GEOMETRY
    net = DDP(raw, find_unused_parameters=True) if ddp else raw  # geometry-only items leave lm_head without gradient
    vlm.train()
    dtype = getattr(torch, cfg.dtype)
    device_type = device.split(":")[0]
    autocast = torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)

    head_params = list(raw.heads.parameters()) if geometry else []
    head_ids = {id(p) for p in head_params}
    base_params = [p for p in raw.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": base_params, "lr": cfg.lr},
                             {"params": head_params, "lr": cfg.lr * cfg.head_lr_mult}], weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, warmup=max(1, int(cfg.warmup * cfg.steps)),
                                                           total=cfg.steps))

    # Data: item k of the whole run is fully determined by (seed, k), so resuming needs only the step.
    try:
        geo = data.SceneDataset(cfg.data, size=proc.size, num_frames=parse_range(cfg.frames),
                                grids=tuple(int(g) for g in cfg.grids.split(",")), window=cfg.window, seed=cfg.seed,
                                preload=cfg.preload, keep=cfg.keep_tracks)
        sft = data.InstructionDataset(cfg.sft_data, cfg.sft_root or None, parse_range(cfg.frames)) if cfg.sft_data else None
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--data / --sft-data: {e}")
    items = Items(cfg, proc, geo, sft)

    start, probe_before, log = 0, None, os.path.join(cfg.out, "log.jsonl")
    if ckpt is not None:
        load_trained(raw, ckpt["model"], f"{cfg.out}/checkpoint.pt")
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        start, probe_before = ckpt["step"], ckpt.get("probe_before")
        if master:
            truncate_log(log, start)
            print(f"resumed from {cfg.out}/checkpoint.pt at step {start}")

    if master:
        resolved = {**dataclasses.asdict(cfg), "world": world, "global_batch": cfg.accum * world, "device": device}
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(resolved, f, indent=1)
        print("config: " + ", ".join(f"{k}={v}" for k, v in resolved.items()))
        print(f"model {cfg.model} | objective {cfg.objective} | supervised layers {len(raw.layer_ids) if geometry else 0} "
              f"| trainable {sum(p.numel() for p in raw.parameters() if p.requires_grad) / 1e6:.2f}M | global batch "
              f"{cfg.accum * world} = {cfg.accum} micro-steps x {world} processes x 1 sample | {len(geo.scenes)} scenes")

    probe_sets = {}  # held-out folder -> probe samples
    if cfg.probe and master and not held_out:
        print("probe skipped: give --probe-scenes DIR (held-out DL3DV-layout scenes) to measure the layers' own "
              "Q-K matching before and after training")
    elif cfg.probe and master:
        import probe
        probe_sets = {p: probe.probe_samples(p, proc.size, 8, cfg.probe_samples, seed=cfg.seed + 1) for p in held_out}
        if probe_before is None and start == 0:
            with autocast:
                probe_before = {p: probe.run_probe(vlm.eval(), proc, s, raw if geometry else None, cfg.tau, device,
                                                   f"probe before ({p})") for p, s in probe_sets.items()}
            vlm.train()
        elif probe_before is None:
            print("the checkpoint holds no 'before' probe; only the 'after' probe runs")

    loader = torch.utils.data.DataLoader(items, batch_size=None, sampler=item_indices(start, cfg.steps, cfg.accum, world, rank),
                                         num_workers=cfg.workers, collate_fn=as_is, pin_memory="cuda" in device,
                                         prefetch_factor=4 if cfg.workers else None)
    batches = iter(loader)
    bad, replaced, t0 = 0, 0, time.time()
    for step in range(start, cfg.steps):
        terms = torch.zeros(5, device=device)  # loss, lm, corr, depth, native (means over micro-steps)
        for micro in range(cfg.accum):
            item = to_device(next(batches), device)
            replaced += item["replaced"]  # unusable scene samples the dataset replaced by the next candidate
            inputs = item["inputs"]
            sync = nullcontext() if (not ddp or micro == cfg.accum - 1) else net.no_sync()
            with sync, autocast:
                if "targets" in item:  # heads and G3-G5 per layer, inside the forward
                    loss_fn = partial(gasp_losses, targets=item["targets"], tau=cfg.tau, q_offset=item["anchor"])
                    native_fn = partial(native_loss, targets=item["targets"], grid=proc.grid,
                                        q_offset=item["anchor"]) if cfg.lambda_n else None
                    out, corr, depth, *native = net(inputs, item["token_map"], item["anchor"], loss=loss_fn,
                                                    native=native_fn)
                    native = native[0] if native else torch.zeros(1, device=device)
                else:
                    out = net(inputs)[0] if geometry else net(**inputs, use_cache=False)
                    corr = depth = native = torch.zeros(1, device=device)
                lm = out.loss if item["lm"] else torch.zeros((), device=device)
                del out  # its logits and vision features are not needed in backward
                loss = total_loss(lm, corr, depth, cfg.lambda_c, cfg.lambda_d if cfg.objective == "full" else 0.0)
                loss = loss + cfg.lambda_n * native.mean()  # the extension (0 by default)
            scaler.scale(loss / cfg.accum).backward()
            terms += torch.stack([loss, lm, corr.mean(), depth.mean(), native.mean()]).detach().float() / cfg.accum
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
        scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if master and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            dt = (time.time() - t0) / (step + 1 - start)
            rec = dict(step=step + 1, loss=terms[0].item(), lm=terms[1].item(), corr=terms[2].item(),
                       depth=terms[3].item(), **({"native": terms[4].item()} if cfg.lambda_n else {}),
                       lr=sched.get_last_lr()[0], grad_norm=float(gnorm), s_per_step=dt,
                       samples_per_s=cfg.accum * world / dt, eta_min=dt * (cfg.steps - step - 1) / 60)
            print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            if master:
                save_checkpoint(os.path.join(cfg.out, "checkpoint.pt"), raw, opt, sched, step + 1, cfg, probe_before)
            if ddp:
                dist.barrier()
    if master and (replaced or geo.skipped["scenes"] or geo.skipped["folders"]):
        print(f"data: {geo.skipped['scenes']} broken scenes and {geo.skipped['folders']} folders without "
              f"transforms.json skipped; {replaced} samples of this process replaced by the next candidate")

    if master and probe_sets:
        results = {}
        for p, samples in probe_sets.items():
            with autocast:
                after = probe.run_probe(vlm.eval(), proc, samples, raw if geometry else None, cfg.tau, device,
                                        f"probe after ({p})")
            results[p] = {"before": probe_before[p], "after": after} if probe_before and p in probe_before else \
                {"after": after}
        with open(os.path.join(cfg.out, "probe.json"), "w") as f:
            json.dump(results, f, indent=1)
        for p, res in results.items():
            print(f"\nheld-out scenes {p}")
            print(probe.pck_table(res))
            for name, r in res.items():
                n = r["native"]
                peak, t = n["peak_layer"], n["temporal"][n["peak_layer"]]
                seq = (f" (per sample {n['rho_seq_mean'][peak]:+.2f} +- {n['rho_seq_std'][peak]:.2f})"
                       if "rho_seq_mean" in n else "")  # a "before" probe resumed from an older checkpoint has none
                print(f"{name:>6}: peak native PCK@2 {n['peak_pck2']:.3f} (layer {peak}), rho at peak "
                      f"{n['rho'][peak]:+.2f}{seq}, Y(largest gap) {t[max(t)]:.2f}")
    if master and cfg.export:
        M.export(raw, proc, os.path.join(cfg.out, "export"))
        print(f"exported a stock checkpoint to {cfg.out}/export")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
