"""Downstream evaluation (GASP Table 1): run a model on All-Angles Bench, VSI-Bench and BLINK, score its
answers as each benchmark's official code does, and print the paper's table.

  * run    the official prompts, greedy batched generation with the stock HF model (model.load), one JSONL line
           per item written as it goes, each with an `inputs` record (mode video / images, frame count, each
           visual item's grid (t, h, w) in patches, the number of visual tokens) and the item's fingerprint;
           the resolved settings and the weights' fingerprint in <out stem>.settings.json. An interrupted run
           resumes where it stopped, after checking that it resumes the same weights, input settings and items;
  * score  one scorer for `run` and `score`: coverage (items scored / items in the benchmark, per category,
           printed and stored in <stem>.summary.json); duplicate ids, a partial or a truncated file refused
           unless --allow-partial;
  * table  a markdown table in the paper's layout, one row per predictions file.
The model is fed as each official harness feeds it (`--inputs official`, OfficialInputs): Qwen2/2.5-VL images
aspect-kept by smart_resize within the harness's min/max pixels, VSI-Bench in Qwen VIDEO mode (2 frames per token
group); LLaVA-NeXT-Video images through the LLaVA-NeXT anyres path, video frames resized on the short edge and
centre-cropped, linear RoPE scaling as thinking-in-space sets it; LLaVA-OneVision VSI-Bench video; the
conversation from the tokenizer's chat template. `--inputs train-size` feeds model.py's training inputs instead
(fixed squares), to probe what training saw.
The readers, official answer extraction and aggregation live in benchmarks/ (one file a benchmark, each with its
pinned reference): VSI-Bench mean per question type with Rel. Dir. = mean of easy/medium/hard; All-Angles micro
mean; BLINK mean of subtasks, unresolved answers counted wrong, a labelled NOT official second pass reported apart.
All scores are on the 0-100 scale.

Run (a checkpoint is any folder model.load reads, e.g. train.py's export):
  python eval.py run   --benchmark vsibench  --data VSI-Bench --model runs/gasp/export --out vsi_gasp.jsonl
  python eval.py run   --benchmark allangles --data All-Angles-Bench --model Qwen/Qwen2.5-VL-7B-Instruct \\
                       --out aa_base.jsonl --device cuda --dtype bfloat16 --batch-size 1   # reporting settings
  python eval.py run   --benchmark blink --data BLINK --model runs/gasp/export --out blink.jsonl --limit 5
  python eval.py score --benchmark vsibench --data VSI-Bench --predictions vsi_gasp.jsonl   # JSON summary
  python eval.py table --benchmark vsibench --data VSI-Bench --predictions vsi_base.jsonl vsi_gasp.jsonl
Every GPU (one model copy each; the file is the one a single process writes, resumable with any process count),
and a model larger than one GPU spread over the GPUs of a node:
  torchrun --nproc_per_node 8 eval.py run --benchmark vsibench --data VSI-Bench --model runs/gasp/export --out vsi.jsonl
  python eval.py run --benchmark vsibench --data VSI-Bench --model Qwen/Qwen2.5-VL-72B-Instruct --device-map auto \\
                     --out vsi_72b.jsonl

References (the official harness settings the inputs follow, pinned):
  VSI-Bench   github.com/vision-x-nyu/thinking-in-space @51e089c, lmms_eval/models/llava_vid.py,
              llava_onevision.py; lmms-eval qwen2_5_vl for the Qwen pixel bounds
  All-Angles  github.com/Chenyu-Wang567/All-Angles-Bench @0e1d210, VLMEvalkit/vlmeval/config.py
  BLINK       github.com/zeyofu/BLINK_Benchmark @2d6a779, eval/test_benchmark.py; lmms-eval qwen2_5_vl defaults
  GASP        arXiv 2605.30231, Table 1
"""

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import BENCHMARKS
from benchmarks.common import item_hash, read_text, require
from benchmarks.media import check_media, video_file, visuals
from benchmarks.scoring import markdown_table, read_predictions, score_file, score_item, select
from families import family
from runtime import checkpoint, distributed

# ----------------------------------------------------------------------------- inputs as the harnesses build them

QWEN_KINDS = ("qwen2_vl", "qwen2_5_vl")
OFFICIAL_KINDS = QWEN_KINDS + ("llava_next_video", "llava_onevision")
# (min_pixels, max_pixels) the official harnesses give Qwen2/2.5-VL; smart_resize keeps the aspect ratio within them.
QWEN_PIXELS = {"vsibench": (256 * 28 * 28, 602112),  # video, per frame (thinking-in-space / lmms-eval qwen2_5_vl)
               "allangles": (1280 * 28 * 28, 16384 * 28 * 28),  # All-Angles VLMEvalKit fork, vlmeval/config.py
               "blink": (256 * 28 * 28, 1605632)}  # lmms-eval qwen2_5_vl defaults
# thinking-in-space llava_vid: least_token_number = frames * tokens per frame + 1000 text tokens
LLAVA_TEXT_BUDGET = 1000


def rope_factor(n_frames: int, tokens_per_frame: int, context: int) -> int:
    """Linear RoPE factor thinking-in-space (lmms_eval/models/llava_vid.py) sets for LLaVA-NeXT-Video:
    ceil((F * tokens per frame + 1000) / context); a factor of 1 leaves the model as it is."""
    return math.ceil((n_frames * tokens_per_frame + LLAVA_TEXT_BUDGET) / context)


def set_linear_rope(vlm, factor: int) -> str:
    """Give the language model linear RoPE scaling (positions divided by `factor`) unless its config already
    scales at least that much; returns the line for the run log."""
    tc = getattr(vlm.config, "text_config", vlm.config)
    old = dict(tc.rope_parameters or {})
    if factor < 2 or (old.get("rope_type") == "linear" and old.get("factor", 1) >= factor):
        return f"rope: {old} kept ({factor=})"
    tc.rope_parameters = dict(old, rope_type="linear", factor=float(factor))
    lm = vlm.get_decoder() if hasattr(vlm, "get_decoder") else vlm.model.language_model
    device = lm.rotary_emb.inv_freq.device
    lm.rotary_emb = type(lm.rotary_emb)(config=tc).to(device)  # recomputes inv_freq = default / factor
    return f"rope: {old} -> {tc.rope_parameters} (thinking-in-space: ceil((frames*tokens + 1000) / context))"


class OfficialInputs:
    """Frames / images + prompt -> the stock model's inputs as the official harness builds them.

      Qwen2/2.5-VL   images: the stock Qwen2VLImageProcessorPil with the harness's min/max pixels (aspect kept,
                     sides multiples of 28), one <|vision_start|><|image_pad|><|vision_end|> per image;
                     VSI-Bench: VIDEO mode, the frames resized by the same smart_resize rule and patchified in
                     groups of temporal_patch_size (2) frames -> pixel_values_videos + video_grid_thw (t, h, w),
                     one <|video_pad|> block of t*h*w / merge^2 tokens (the Qwen2-VL video processor's rule,
                     rebuilt here because that processor needs torchvision);
      LLaVA-NeXT-Video  images: the stock LLaVA-NeXT image path (LlavaNextProcessor + LlavaNextImageProcessorPil:
                     anyres tiles, image_sizes, <image> expanded to its feature count); VSI-Bench frames: the
                     checkpoint's video preprocessing (shortest edge -> crop size, centre crop, CLIP normalisation,
                     CLIPImageProcessorPil per frame), (crop / patch / pool stride)^2 <video> tokens per frame;
      LLaVA-OneVision   VSI-Bench only: frames squashed to the SigLIP size (SiglipImageProcessorPil), 2x2 bilinear
                     pooling, ceil(side / patch / 2)^2 tokens per frame + one newline token per video.
    The conversation text comes from the tokenizer's chat template (media first, then the prompt); a tokenizer
    without one gets the family's documented template text, and the run log says so.
    Calling it returns (batch for generate(), one `inputs` record per item)."""

    def __init__(self, config, tokenizer, benchmark: str):
        self.kind, self.config, self.tok, self.benchmark = config.model_type, config, tokenizer, benchmark
        if self.kind not in OFFICIAL_KINDS:
            raise ValueError(f"--inputs official has no harness settings for model type {self.kind!r} (known: "
                             f"{', '.join(OFFICIAL_KINDS)}); run it with --inputs train-size")
        self.video = benchmark == "vsibench"
        v = config.vision_config
        if self.kind in QWEN_KINDS:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
            self.min_px, self.max_px = QWEN_PIXELS[benchmark]
            self.patch, self.merge, self.temporal = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
            self.image_processor = Qwen2VLImageProcessorPil(
                min_pixels=self.min_px, max_pixels=self.max_px, patch_size=self.patch, merge_size=self.merge,
                temporal_patch_size=self.temporal)
            self.pad = {"image": config.image_token_id, "video": config.video_token_id}
        elif self.kind == "llava_onevision":
            if not self.video:
                raise ValueError("--inputs official builds LLaVA-OneVision inputs for VSI-Bench (video) only: its "
                                 "anyres_max_9 image processor is not rebuilt here; use --inputs train-size")
            from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
            # thinking-in-space llava_onevision: each frame through the SigLIP image processor (squashed to
            # S x S, mean = std = 0.5), 2x2 bilinear pooling -> ceil(27 / 2)^2 = 196 tokens per 384 px frame,
            # one newline token after the last frame.
            self.side, self.patch, self.newline = v.image_size, v.patch_size, 1
            self.frame_processor = SiglipImageProcessorPil(size={"height": self.side, "width": self.side})
            self.frame_tokens = math.ceil(self.side // self.patch / 2) ** 2
            self.pad = {"image": config.image_token_index, "video": config.video_token_index}
        else:
            from transformers import LlavaNextProcessor
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
            from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
            # Assumption: crop size = the CLIP input size (336 for llava-hf/LLaVA-NeXT-Video-7B-hf, whose
            # processor config says shortest_edge 336, crop 336); one CLS token the "default" strategy drops.
            self.side, self.patch = v.image_size, v.patch_size
            odd = [p for p in config.image_grid_pinpoints if p[0] % self.side or p[1] % self.side]
            if odd and not self.video:  # the processor would cut other tiles than the model unpacks
                raise ValueError(f"config image_grid_pinpoints {odd} are not multiples of the vision tower's "
                                 f"image_size {self.side}; anyres tiles would not line up: fix the model's config.json")
            size, crop = {"shortest_edge": self.side}, {"height": self.side, "width": self.side}
            self.frame_processor = CLIPImageProcessorPil(size=size, crop_size=crop)
            self.llava_next = LlavaNextProcessor(
                image_processor=LlavaNextImageProcessorPil(size=size, crop_size=crop,
                                                           image_grid_pinpoints=config.image_grid_pinpoints),
                tokenizer=tokenizer, patch_size=self.patch, num_additional_image_tokens=1,
                vision_feature_select_strategy=config.vision_feature_select_strategy)
            self.frame_tokens = (self.side // self.patch // config.spatial_pool_stride) ** 2  # 144 at 336 px
            self.newline = 0
            self.pad = {"image": config.image_token_index, "video": config.video_token_index}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.template = "chat template" if getattr(tokenizer, "chat_template", None) else \
            "no chat template in the tokenizer: the family's documented template text"

    def describe(self) -> str:
        if self.kind in QWEN_KINDS:
            mode = "video, frames in groups of %d" % self.temporal if self.video else "images"
            return f"{self.kind}: {mode}, {self.min_px}..{self.max_px} px (smart_resize), {self.template}"
        crop = "squashed" if self.kind == "llava_onevision" else "crop"
        mode = f"video, {self.side}px {crop}, {self.frame_tokens} tokens/frame" if self.video else \
            f"images, anyres tiles of {self.side}px"
        return f"{self.kind}: {mode}, {self.template}"

    def text(self, n_images: int, prompt: str) -> str:
        """The conversation up to the assistant turn, one placeholder per image (or one for the video)."""
        media = [{"type": "video"}] if self.video else [{"type": "image"}] * n_images
        turn = {"role": "user", "content": media + [{"type": "text", "text": prompt}]}
        # A tokenizer without a chat template gets its family's documented one (families.py, as model.Processor).
        template = None if getattr(self.tok, "chat_template", None) else family(self.config).template
        return self.tok.apply_chat_template([turn], chat_template=template, tokenize=False, add_generation_prompt=True)

    def tokenize(self, text: str) -> list[int]:
        bos = self.tok.bos_token  # as ProcessorMixin.apply_chat_template: no second BOS if the template wrote one
        return self.tok(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]

    def check_placeholders(self, ids: list[int], key: str, n: int):
        found = ids.count(self.pad[key])
        if found != n:
            raise ValueError(f"the conversation text ({self.template}) holds {found} {key} placeholder(s) for {n} "
                             f"{key}(s); fix the tokenizer's chat template")

    def qwen_video(self, frames) -> tuple[torch.Tensor, list[int]]:
        """(F, H, W, 3) uint8 -> patches (t*h*w, 3*temporal*patch^2) and grid [t, h, w] in patches."""
        import torch.nn.functional as nnf
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()  # (F, 3, H, W)
        H, W = smart_resize(x.shape[2], x.shape[3], self.patch * self.merge, self.min_px, self.max_px)
        # Assumption: qwen-vl-utils' resize (torchvision bicubic, antialias, on uint8: rounded back to 0..255)
        x = nnf.interpolate(x, size=(H, W), mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
        if pad := -len(x) % self.temporal:  # an odd frame count repeats the last frame
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        ip = self.image_processor
        mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
        x = (x / 255 - mean) / std
        t, h, w, m, p = len(x) // self.temporal, H // self.patch, W // self.patch, self.merge, self.patch
        x = x.view(t, self.temporal, 3, h // m, m, p, w // m, m, p)  # (t, tp, C, h/m, m, p, w/m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, tp, p, p): merge groups contiguous
        return x.reshape(t * h * w, 3 * self.temporal * p * p), [t, h, w]

    def __call__(self, visuals_batch: list, prompts: list[str], fps_batch=None):
        """fps_batch: per video, the frame rate of the sampled frames (None: unknown)."""
        seqs, records, extra = [], [], {"pixel_values": [], "grid": [], "image_sizes": [], "second_per_grid_ts": []}
        for vis, prompt, fps in zip(visuals_batch, prompts, fps_batch or [None] * len(prompts)):
            ids = self.tokenize(self.text(len(vis), prompt))
            record = dict(mode="video" if self.video else "images", frames=len(vis))
            if self.kind in QWEN_KINDS:
                if self.video:
                    pixels, grid = self.qwen_video(vis)
                    grids = [grid]
                else:
                    out = self.image_processor(images=vis, return_tensors="pt")
                    pixels, grids = out["pixel_values"], out["image_grid_thw"].tolist()
                if self.video and self.kind == "qwen2_5_vl":  # M-RoPE time: tokens_per_second * seconds per group
                    record["second_per_grid"] = self.temporal / fps if fps else 1.0
                    extra["second_per_grid_ts"].append(record["second_per_grid"])
                key = "video" if self.video else "image"
                self.check_placeholders(ids, key, len(grids))
                counts = iter([t * h * w // self.merge ** 2 for t, h, w in grids])
                ids = [j for i in ids for j in ([i] * next(counts) if i == self.pad[key] else [i])]
                extra["pixel_values"].append(pixels)
                extra["grid"] += grids
            elif self.video:
                frames = self.frame_processor(images=list(vis), return_tensors="pt")["pixel_values"]  # (F, 3, S, S)
                n = self.frame_tokens * len(vis) + self.newline
                self.check_placeholders(ids, "video", 1)
                ids = [j for i in ids for j in ([i] * n if i == self.pad["video"] else [i])]
                extra["pixel_values"].append(frames)
                grids = [[len(vis), self.side // self.patch, self.side // self.patch]]
            else:
                from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
                text, bos = self.text(len(vis), prompt), self.tok.bos_token  # the stock processor expands <image>
                out = self.llava_next(images=vis, text=[text], return_tensors="pt",
                                      add_special_tokens=not (bos and text.startswith(bos)))
                ids = out["input_ids"][0].tolist()
                extra["pixel_values"] += list(out["pixel_values"])  # (tiles, 3, S, S) per image, tiles zero-padded
                extra["image_sizes"].append(out["image_sizes"])
                grids = [[image_size_to_num_patches(s.tolist(), self.config.image_grid_pinpoints, self.side),
                          self.side // self.patch, self.side // self.patch] for s in out["image_sizes"]]
            seqs.append(ids)
            records.append(dict(record, grids=grids, tokens=sum(i in self.pad.values() for i in ids)))
        S = max(map(len, seqs))
        batch = {"input_ids": torch.tensor([[self.pad_id] * (S - len(s)) + s for s in seqs]),  # left padding
                 "attention_mask": torch.tensor([[0] * (S - len(s)) + [1] * len(s) for s in seqs])}
        if self.kind in QWEN_KINDS:
            key = "video" if self.video else "image"
            batch["pixel_values_videos" if self.video else "pixel_values"] = torch.cat(extra["pixel_values"])
            batch[f"{key}_grid_thw"] = torch.tensor(extra["grid"])
            if extra["second_per_grid_ts"]:
                batch["second_per_grid_ts"] = torch.tensor(extra["second_per_grid_ts"])
            ids = batch["input_ids"]  # M-RoPE reads the modality of each position: 1 image, 2 video
            batch["mm_token_type_ids"] = (ids == self.pad["image"]).int() + 2 * (ids == self.pad["video"]).int()
        elif self.video:
            batch["pixel_values_videos"] = torch.stack(extra["pixel_values"])  # (B, F, 3, S, S)
        else:
            tiles = max(len(p) for p in extra["pixel_values"])
            batch["pixel_values"] = torch.stack([torch.cat([p, p.new_zeros(tiles - len(p), *p.shape[1:])])
                                                 for p in extra["pixel_values"]])  # (images, tiles, 3, S, S)
            batch["image_sizes"] = torch.cat(extra["image_sizes"])
        return batch, records


# ----------------------------------------------------------------------------- generation

def sampled_fps(base: str, n_frames: int):
    """Frame rate of the n frames sampled from an mp4 (n / total frames * its fps, the sampled_fps of
    qwen-vl-utils and transformers' VideoMetadata); None for a frame folder, which carries no timing."""
    path = video_file(base)
    if path.is_dir():
        return None
    av = require("av", "av", f"reading the frame rate of {path}")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        total, fps = stream.frames, stream.average_rate
    return n_frames / total * float(fps) if total and fps else None


def train_size_inputs(processor, config):
    """`--inputs train-size`: model.py's training Processor (every frame / image one fixed square, VSI-Bench
    frames in the family's training layout: one video of repeated frames for Qwen2-VL / Qwen2.5-VL, a list of
    images for Qwen3-VL, video frames for LLaVA), to probe the inputs training saw.
    Returns build(visuals, prompts, fps) -> (batch, records) like OfficialInputs."""
    vis_ids = {getattr(config, k, None) for k in ("image_token_id", "video_token_id", "image_token_index",
                                                   "video_token_index")} - {None}

    def build(visuals_batch, prompts, fps_batch=None):
        batch = processor(visuals_batch, prompts)
        grids, videos, records = batch.get("image_grid_thw"), batch.get("video_grid_thw"), []
        grids = iter(grids.tolist()) if grids is not None else None
        for i, (row, vis) in enumerate(zip(batch["input_ids"], visuals_batch)):
            if grids is not None:
                mode, g = "images", [next(grids) for _ in vis]
            elif videos is not None:  # Qwen2-VL / Qwen2.5-VL: one (frames, h, w) grid an item
                mode, g = "video", [videos[i].tolist()]
            elif "pixel_values_videos" in batch:
                p = config.vision_config.patch_size
                mode, g = "video", [[len(vis), *(s // p for s in batch["pixel_values_videos"].shape[-2:])]]
            else:
                mode, g = "images", []
            records.append(dict(mode=mode, frames=len(vis), grids=g, tokens=sum(int(i) in vis_ids for i in row)))
        return batch, records
    return build


def batches(items: list[dict], batch_size: int) -> list[list[dict]]:
    """`items` in order, cut into batches of at most `batch_size` items with equal numbers of images (LLaVA's
    tensors need that)."""
    out = []
    for _, group in itertools.groupby(items, key=lambda it: len(it.get("images", ()))):
        group = list(group)
        out += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return out


def generate(vlm, tokenizer, build, items: list[dict], batch_size: int, max_new_tokens: int, n_frames: int = 32,
             context: int | None = None):
    """Greedy answers, yielded as (item, text, inputs record). `build(visuals, prompts, fps)` -> (batch, records)
    makes the model inputs (OfficialInputs or train_size_inputs); items are batched by `batches`. A prompt plus
    answer longer than `context` positions is marked in its record (`over_context`: the prompt length), as nothing
    else would show it."""
    for batch in batches(items, batch_size):
        frames = [visuals(it, n_frames) for it in batch]  # first: a broken video is named with its item
        fps = [sampled_fps(it["video"], n_frames) if "video" in it else None for it in batch]
        inputs, records = build(frames, [it["prompt"] for it in batch], fps)
        for record, mask in zip(records, inputs.get("attention_mask", [None] * len(records))):
            if context and mask is not None and int(mask.sum()) + max_new_tokens > context:
                record["over_context"] = int(mask.sum())
        # vlm.device: its first parameter's; under a device map accelerate's hooks carry the inputs on from there
        inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
        if "pixel_values" in inputs or "pixel_values_videos" in inputs:
            key = "pixel_values" if "pixel_values" in inputs else "pixel_values_videos"
            inputs[key] = inputs[key].to(vlm.dtype)
        with torch.inference_mode():  # plain greedy: overrides sampling / repetition_penalty in generation_config
            ids = vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)
        texts = tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        yield from zip(batch, texts, records)


# What a resume must match: the weights (by content), every setting that changes the inputs or the answers.
SETTINGS_KEYS = ("benchmark", "weights_fingerprint", "inputs", "frame_size", "frames", "dtype", "max_new_tokens")


def settings_path(out: Path) -> Path:
    return out.with_name(out.stem + ".settings.json")


def weights_fingerprint(model: str) -> str:
    """sha256 of the checkpoint's weight files (*.safetensors, else *.bin) and config.json, names and bytes:
    what a resume compares, so that a folder retrained in place is not taken for the model its answers came from.
    Reading the bytes once costs about what loading them does (seconds for a 7B model); an HF id is resolved in
    the hub cache as model.load resolves it."""
    trained = checkpoint.find(model)
    if trained is not None:  # a training checkpoint: its trained weights and settings are in the one file
        return _sha256([Path(trained)])
    folder = Path(model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(model, allow_patterns=["*.safetensors", "config.json"]))
        if not any(folder.glob("*.safetensors")):  # an older repository: PyTorch .bin weights only
            folder = Path(snapshot_download(model, allow_patterns=["*.bin", "config.json"]))
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors or *.bin weight files; pass a checkpoint folder or "
                                "HF id, or a training checkpoint, that model.load reads")
    return _sha256(files + [p for p in [folder / "config.json"] if p.exists()])


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def check_resume(out: Path, settings: dict, done: dict, items: list[dict]):
    """Refuse to add to `out` unless its answers came from the same weights, input settings and items."""
    fix = f"use another --out, or delete {out} and {settings_path(out).name} to start again"
    path = settings_path(out)
    if not path.exists():
        raise ValueError(f"{out} holds {len(done)} answer(s) but no {path.name} records what made them; {fix}")
    try:
        old = json.loads(read_text(path))
    except ValueError as e:  # not JSON (an empty file too), or not UTF-8
        raise ValueError(f"{path}: unreadable ({e}); it records what {out.name} was made with: {fix}") from None
    if not isinstance(old, dict):
        raise ValueError(f"{path}: a JSON {type(old).__name__}, not the settings object eval.py writes; {fix}")
    diff = [k for k in SETTINGS_KEYS if old.get(k) != settings.get(k)]
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} now {settings.get(k)!r}" for k in diff)
        raise ValueError(f"{out} was written with other settings ({changes}); {fix}, or resume with the same "
                         "model and flags")
    changed = [str(it["id"]) for it in items if str(it["id"]) in done and done[str(it["id"])] != item_hash(it)]
    if changed:
        raise ValueError(f"{out}: {len(changed)} answer(s) were made for other questions than --data holds now "
                         f"(ids {', '.join(changed[:5])}); {fix}")


def run_benchmark(benchmark: str, items: list[dict], out: Path, vlm_loader, batch_size: int = 1, max_new_tokens=None,
        n_frames: int = 32, inputs: str = "official", settings: dict | None = None, env: distributed.Env | None = None
        ) -> None:
    """Append one scored line per item not yet in `out`; the model is loaded only if work remains.
    The resolved settings go to `<out stem>.settings.json`; a resume with other weights, settings or items is
    refused (check_resume).
    Data-parallel under torchrun (`env`, runtime.distributed): the batches one process would run go round-robin
    to the processes, one round (a batch each) at a time; rank 0 alone reads and writes the files, gathers each
    round's lines and appends them in the one-process order. The file is then the one a single process writes,
    whatever the process count; a kill loses at most the round under way, and a resume (any process count) skips
    the items already in the file."""
    env = env or distributed.Env(False, 0, 1, "cpu")
    settings = dict(settings or {}, benchmark=benchmark, inputs=inputs, frames=n_frames, batch_size=batch_size,
                    max_new_tokens=max_new_tokens or BENCHMARKS[benchmark].max_new_tokens)
    done = {}
    if env.master:
        done, report = read_predictions(out) if out.exists() else ({}, dict(benchmarks=set(), item_hashes={}))
        if report["benchmarks"] - {benchmark}:  # its ids would mark this benchmark's items as done
            raise ValueError(f"{out} holds {', '.join(sorted(report['benchmarks']))} predictions; use another --out")
        if done:
            check_resume(out, settings, report["item_hashes"], items)
    done = distributed.broadcast(set(done), env)
    todo = [it for it in items if str(it["id"]) not in done]
    if not todo:
        return
    todo.sort(key=lambda it: (len(it.get("images", ())), it.get("video", "")))  # one decode per video
    rounds = batches(todo, batch_size)  # as one process runs them; round r: batch r * world + rank on each rank
    check_media([it for batch in rounds[env.rank::env.world] for it in batch])
    vlm, processor = vlm_loader()
    text_config = getattr(vlm.config, "text_config", vlm.config)
    context = getattr(text_config, "max_position_embeddings", None)
    if inputs == "official":
        build = OfficialInputs(vlm.config, processor.tokenizer, benchmark)
        settings["harness"] = build.describe()
        if build.kind == "llava_next_video" and build.video:
            factor = rope_factor(n_frames, build.frame_tokens, context)
            settings["rope"] = set_linear_rope(vlm, factor)
            context *= max(factor, 1)
    else:
        build = train_size_inputs(processor, vlm.config)
        settings["harness"] = "train-size: model.py's training Processor"
    if env.master:
        for k in ("harness", "rope"):
            if k in settings:
                print(f"eval.py run: {settings[k]}", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        settings_path(out).write_text(json.dumps(settings, indent=2) + "\n")
        if out.exists() and out.stat().st_size and not (raw := out.read_bytes()).endswith(b"\n"):
            keep = raw.rfind(b"\n") + 1  # an interrupted write left half a line: drop it (its item is redone)
            print(f"eval.py run: {out}: dropping a truncated last line ({len(raw) - keep} bytes)", file=sys.stderr)
            with out.open("r+b") as f:
                f.truncate(keep)
    over = 0
    writer = out.open("a", encoding="utf-8") if env.master else contextlib.nullcontext()
    with writer as f, tqdm(total=len(todo), desc=f"{benchmark} -> {out.name}", disable=not env.master) as bar:
        for r in range(0, len(rounds), env.world):
            mine = rounds[r + env.rank] if r + env.rank < len(rounds) else []  # the last round may leave ranks idle
            # Assumption: the decoded text is stripped, as lmms-eval's model wrappers do
            lines = [dict(score_item(benchmark, item, text.strip()), inputs=record) for item, text, record in
                     generate(vlm, processor.tokenizer, build, mine, batch_size, settings["max_new_tokens"], n_frames,
                              context)]
            for line in itertools.chain.from_iterable(distributed.gather(lines, env) or []):  # rank 0: rank order
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                f.flush()
                bar.update()
                over += "over_context" in line["inputs"]
    if over:
        print(f"eval.py run: warning: {over} item(s) need more than the model's {context} positions (prompt + "
              f"{settings['max_new_tokens']} new tokens); marked `over_context` in {out}", file=sys.stderr)


# ----------------------------------------------------------------------------- CLI

def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


def write_summary(predictions: Path, summary: dict) -> Path:
    path = predictions.with_name(predictions.stem + ".summary.json")
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="which benchmark")
    common.add_argument("--data", required=True, type=Path, help="the benchmark folder as released: VSI-Bench "
                        "test.jsonl + video folders; All-Angles data.json + images; BLINK <Subtask>/val-*.parquet")
    common.add_argument("--categories", nargs="+", help="only these categories (question types / subtasks)")
    r = sub.add_parser("run", parents=[common], help="generate answers, write JSONL as it goes, print the summary")
    r.add_argument("--model", required=True, help="checkpoint folder or HF id (train.py's export/, or a training checkpoint.pt) that model.load reads")
    r.add_argument("--out", required=True, type=Path, help="predictions JSONL; an existing one is resumed if it "
                   "was made with the same weights, settings and items (settings in <stem>.settings.json, summary "
                   "in <stem>.summary.json)")
    r.add_argument("--inputs", choices=["official", "train-size"], default="official",
                   help="official: each benchmark fed as its official harness feeds the model family (default);\n"
                        "train-size: model.py's training inputs (fixed squares), to probe what training saw")
    r.add_argument("--batch-size", type=positive, default=1, help="items per generate() call (reporting: 1)")
    r.add_argument("--limit", type=positive, help="at most this many items per category (quick runs)")
    r.add_argument("--frames", type=positive, default=32, help="VSI-Bench frames per video (official: 32)")
    r.add_argument("--max-new-tokens", type=positive,
                   help="default: the official 16 / 2048 / 1024 (VSI / AA / BLINK)")
    r.add_argument("--frame-size", type=positive, help="--inputs train-size only: the square side in px "
                   "(default: model.py's)")
    r.add_argument("--device", help="torch device (default: cuda if available, else cpu; under torchrun each "
                   "process's cuda:LOCAL_RANK)")
    r.add_argument("--device-map", choices=["auto"], help="auto: a model larger than one GPU spread over the "
                   "visible GPUs (transformers' device_map, needs accelerate; a stock model; under torchrun with "
                   "--nproc_per_node 1)")
    r.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="model dtype (default: bfloat16 on CUDA, the reporting setting; float32 on CPU)")
    s = sub.add_parser("score", parents=[common], help="re-score a predictions file, print (and store in "
                       "<stem>.summary.json) the summary JSON with its coverage")
    s.add_argument("--predictions", required=True, type=Path, help="JSONL of {\"id\": ..., \"prediction\": ...}")
    t = sub.add_parser("table", parents=[common], help="markdown table, one row per predictions file")
    t.add_argument("--predictions", required=True, type=Path, nargs="+", help="one JSONL per checkpoint")
    for q in (s, t):
        q.add_argument("--allow-partial", action="store_true", help="score a file that lacks items, has a "
                       "truncated last line, non-prediction lines or non-string predictions (counted in the "
                       "coverage or scored wrong, not refused)")
    args = p.parse_args(argv)
    try:
        items = BENCHMARKS[args.benchmark].load(args.data, media=args.cmd == "run")
        dup = [k for k, n in Counter(str(it["id"]) for it in items).items() if n > 1]
        if dup:  # predictions are matched to items by id
            raise ValueError(f"{args.data}: {len(dup)} id(s) used by more than one item ({', '.join(dup[:5])}); "
                             "use the benchmark files as released")
        select(args.benchmark, items, args.categories)  # fail early on an unknown category
        if args.cmd == "run":
            import model
            if args.frame_size and args.inputs == "official":
                raise ValueError("--frame-size applies to --inputs train-size only; official inputs take each "
                                 "harness's own sizes")
            env = distributed.init()  # torchrun: one process per GPU, the items split between them
            distributed.check_device_map(args.device_map, env)
            device = distributed.process_device(args.device, env)
            dtype_name = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
            load = {"device": device, "dtype": dtype_name, "device_map": args.device_map}
            if args.frame_size:
                load["size"] = (args.frame_size, args.frame_size)
            # the fingerprint is read by rank 0 alone, which checks the resume
            settings = dict(model=str(args.model), weights_fingerprint=weights_fingerprint(args.model) if env.master
                            else None, dtype=dtype_name, frame_size=args.frame_size, processes=env.world,
                            device=f"device map {args.device_map}" if args.device_map else str(device))
            if env.master:
                print(f"eval.py run: {args.benchmark}, inputs {args.inputs}, dtype {dtype_name}, batch size "
                      f"{args.batch_size}, frames {args.frames}, {env.world} process(es)", file=sys.stderr)
            run_benchmark(args.benchmark, select(args.benchmark, items, args.categories, args.limit), args.out,
                lambda: model.load(args.model, **load)[:2], args.batch_size, args.max_new_tokens, args.frames,
                args.inputs, settings, env)
            if not env.master:
                return
            # --limit / --categories make a partial run on purpose: scored as it is, with its coverage
            summary = score_file(args.benchmark, items, args.out, args.categories, allow_partial=True)
            write_summary(args.out, summary)
            print(markdown_table(args.benchmark, {args.out.stem: summary}), file=sys.stderr)
            print(json.dumps(summary, indent=2))
        elif args.cmd == "score":
            summary = score_file(args.benchmark, items, args.predictions, args.categories, args.allow_partial)
            write_summary(args.predictions, summary)
            print(json.dumps(summary, indent=2))
        else:
            names = [f.stem for f in args.predictions]
            names = names if len(set(names)) == len(names) else [str(f) for f in args.predictions]
            print(markdown_table(args.benchmark, {n: score_file(args.benchmark, items, f, args.categories,
                                                                args.allow_partial)
                                                  for n, f in zip(names, args.predictions)}))
    except (ValueError, OSError, ImportError) as e:  # OSError: a missing, unreadable or folder path
        sys.exit(f"eval.py {args.cmd}: error: {e}")


if __name__ == "__main__":
    main()
