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
  * table  a markdown table in the paper's layout, one row per predictions file;
  * heatmap  the generalisation figure from score files of base and fine-tuned models (tuned - base, in points).
The model is fed as each official harness feeds it (`--inputs official`, families.Processor): Qwen2/2.5-VL images
aspect-kept by smart_resize within the harness's min/max pixels, VSI-Bench in Qwen VIDEO mode (2 frames per token
group); LLaVA-NeXT-Video images through the LLaVA-NeXT anyres path, video frames resized on the short edge and
centre-cropped, linear RoPE scaling as thinking-in-space sets it; LLaVA-OneVision VSI-Bench video; the
conversation from the tokenizer's chat template. `--inputs train-size` feeds the training inputs instead
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

import torch
from tqdm import tqdm

from benchmarks import BENCHMARKS
from benchmarks.common import item_hash, read_text, require
from benchmarks.media import check_media, video_file, visuals
from benchmarks.scoring import markdown_table, read_predictions, score_file, score_item, select
from families import Processor
from runtime import checkpoint, distributed

# ----------------------------------------------------------------------------- inputs as the harnesses build them

# What differs per family (mode, resize rule, pixel bounds, placeholders) is data in its families/ entry; the one
# Processor builds both the official and the train-size inputs. What is left here changes the model itself.
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
    makes the model inputs (families.Processor.build); items are batched by `batches`. A prompt plus
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
    if inputs == "official":  # the same Processor class, fed as the benchmark's harness feeds this family
        if processor.benchmark != benchmark:  # model.load(benchmark=...) builds it so already
            processor = Processor(vlm.config, processor.tokenizer, folder=processor.folder, benchmark=benchmark)
        if processor.feed.linear_rope:
            factor = rope_factor(n_frames, processor.frame_tokens, context)
            settings["rope"] = set_linear_rope(vlm, factor)
            context *= max(factor, 1)
    settings["harness"] = f"{inputs}: {processor.describe()}"
    build = processor.build
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


def read_score(path: Path) -> dict:
    """A summary that `eval.py score` (or `run`) wrote: <stem>.summary.json itself, or the predictions JSONL whose
    summary sits beside it."""
    summary = path.with_name(path.stem + ".summary.json") if path.suffix == ".jsonl" else path
    if not summary.exists():
        raise FileNotFoundError(f"{path}: no {summary.name} beside it; score it first: python eval.py score "
                                f"--benchmark ... --data ... --predictions {path}")
    try:
        s = json.loads(read_text(summary))
    except json.JSONDecodeError as e:
        raise ValueError(f"{summary}: not JSON ({e}); pass a summary written by eval.py score") from None
    if not isinstance(s, dict) or not {"benchmark", "overall", "coverage"} <= set(s):
        raise ValueError(f"{summary}: not a summary of eval.py score (no benchmark, overall and coverage); "
                         "run eval.py score on its predictions file")
    if s["benchmark"] not in BENCHMARKS:
        raise ValueError(f"{summary}: unknown benchmark {s['benchmark']!r}")
    return s


def heatmap_pairs(pairs: list[str], manifest: Path | None) -> list[tuple[str, Path, Path]]:
    """(model, base file, tuned file) from `--pair MODEL=BASE:TUNED` arguments and a CSV manifest with the
    columns model,base,tuned (paths relative to the manifest's folder)."""
    out = []
    for text in pairs:
        name, _, files = text.partition("=")
        parts = files.split(":")
        if not name or len(parts) != 2 or not all(parts):
            raise ValueError(f"--pair {text!r}: write MODEL=BASE:TUNED, e.g. SpaceR=vsi_base.summary.json:"
                             "vsi_spacer.summary.json")
        out.append((name, Path(parts[0]), Path(parts[1])))
    if manifest:
        import csv
        rows = list(csv.DictReader(read_text(manifest).splitlines()))
        if not rows or not {"model", "base", "tuned"} <= set(rows[0]):
            raise ValueError(f"{manifest}: a CSV with the header model,base,tuned and one line per fine-tuned model "
                             "and benchmark")
        out += [(r["model"], manifest.parent / r["base"], manifest.parent / r["tuned"]) for r in rows]
    if not out:
        raise ValueError("no scores: give --pair MODEL=BASE:TUNED (once per model and benchmark) or --manifest")
    return out


def heatmap(pairs: list[tuple[str, Path, Path]], allow_partial: bool = False) -> tuple[list, list, list, str]:
    """(models, benchmark titles, changes, the markdown table): changes[m][b] = tuned - base overall score in
    points, None where no pair.
    Refused: base and tuned of different benchmarks or item sets, a model scored twice on a benchmark, and
    unless allow_partial a summary of a partial run."""
    models, benches, cells = [], [], {}
    for name, base_file, tuned_file in pairs:
        base, tuned = read_score(base_file), read_score(tuned_file)
        if base["benchmark"] != tuned["benchmark"]:
            raise ValueError(f"{name}: base {base_file} is {base['benchmark']}, tuned {tuned_file} is "
                             f"{tuned['benchmark']}; pair the two scores of one benchmark")
        for f, s in ((base_file, base), (tuned_file, tuned)):
            cov = s["coverage"]
            if cov["scored"] < cov["total"] and not allow_partial:
                raise ValueError(f"{f}: scores {cov['scored']} of {cov['total']} items (a partial run); finish it "
                                 "with eval.py run, or pass --allow-partial")
        totals = [{c: n for c, (_, n) in s["coverage"]["categories"].items()} for s in (base, tuned)]
        if totals[0] != totals[1]:
            raise ValueError(f"{name}: {base_file} and {tuned_file} were scored on different items "
                             f"({totals[0]} vs {totals[1]}); score both with the same --data and --categories")
        key = (name, base["benchmark"])
        if key in cells:
            raise ValueError(f"{name} has two {base['benchmark']} pairs; give one per model and benchmark")
        models += [name] if name not in models else []
        benches += [base["benchmark"]] if base["benchmark"] not in benches else []
        cells[key] = (base["overall"], tuned["overall"])
    changes = [[cells[m, b][1] - cells[m, b][0] if (m, b) in cells else None for b in benches] for m in models]
    table = ["Change relative to the base model, in points (tuned - base overall, 0-100 scale; base -> tuned):", "",
             "| Model | " + " | ".join(BENCHMARKS[b].title for b in benches) + " |", "|---" * (len(benches) + 1) + "|"]
    for m in models:
        table.append(f"| {m} | " + " | ".join(f"{cells[m, b][1] - cells[m, b][0]:+.1f} ({cells[m, b][0]:.1f} -> "
                                             f"{cells[m, b][1]:.1f})" if (m, b) in cells else "–"
                                             for b in benches) + " |")
    return models, [BENCHMARKS[b].title for b in benches], changes, "\n".join(table)


def parser() -> argparse.ArgumentParser:
    """eval.py's command line: run, score, table, heatmap."""
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="which benchmark")
    common.add_argument("--data", required=True, type=Path, help="the benchmark folder as released: VSI-Bench "
                        "test.jsonl + video folders; All-Angles data.json + images; BLINK <Subtask>/val-*.parquet; "
                        "MMSI MMSI_Bench.parquet; STI-Bench qa.parquet + video/; SpaceVista "
                        "bench_all_clean_corrected.json + frame folders")
    common.add_argument("--categories", nargs="+", help="only these categories (question types / subtasks)")
    r = sub.add_parser("run", parents=[common], help="generate answers, write JSONL as it goes, print the summary")
    r.add_argument("--model", required=True, help="checkpoint folder or HF id (train.py's export/, or a training "
                   "checkpoint.pt) that model.load reads")
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
                   help="default: the official 16 / 2048 / 1024 / 2048 / 512 / 8196 (VSI / AA / BLINK / "
                        "MMSI / STI / SpaceVista)")
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
    h = sub.add_parser("heatmap", help="the generalisation figure: each fine-tuned model's change relative to its "
                       "base, per benchmark (PNG + printed table)", formatter_class=argparse.RawTextHelpFormatter,
                       description="Rows = fine-tuned models, columns = benchmarks, cell = tuned - base overall score "
                       "in points (0-100 scale).\nScores are the <stem>.summary.json files that eval.py score writes "
                       "(or their predictions .jsonl, whose summary\nsits beside it); the benchmark is read from each "
                       "file. Example:\n  python eval.py heatmap --out gen.png \\\n"
                       "    --pair SpaceR=vsi_qwen.summary.json:vsi_spacer.summary.json \\\n"
                       "    --pair SpaceR=mmsi_qwen.summary.json:mmsi_spacer.summary.json")
    h.add_argument("--pair", action="append", default=[], metavar="MODEL=BASE:TUNED",
                   help="one fine-tuned model on one benchmark: its base's and its own score file (repeat)")
    h.add_argument("--manifest", type=Path, help="CSV with the header model,base,tuned, one line per pair (paths "
                   "relative to the CSV), instead of or beside --pair")
    h.add_argument("--out", type=Path, default=Path("heatmap.png"), help="the figure (PNG); default heatmap.png")
    h.add_argument("--title", default="Change relative to the base model (points, tuned - base)")
    h.add_argument("--allow-partial", action="store_true", help="accept summaries of partial runs")
    for q in (s, t):
        q.add_argument("--allow-partial", action="store_true", help="score a file that lacks items, has a "
                       "truncated last line, non-prediction lines or non-string predictions (counted in the "
                       "coverage or scored wrong, not refused)")
    return p


def cmd_heatmap(args):
    from figures.heatmap import heatmap as draw_heatmap
    models, benches, changes, table = heatmap(heatmap_pairs(args.pair, args.manifest), args.allow_partial)
    draw_heatmap(models, benches, changes, args.title).save(args.out)
    print(table)
    print(f"eval.py heatmap: wrote {args.out}", file=sys.stderr)


def cmd_run(args, items: list[dict]):
    """Generate (data-parallel under torchrun), then score what was written, partial runs included."""
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
    if args.inputs == "official":  # only what this benchmark's inputs need is checked at load time
        load["benchmark"] = args.benchmark
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


def cmd_table(args, items: list[dict]):
    names = [f.stem for f in args.predictions]
    names = names if len(set(names)) == len(names) else [str(f) for f in args.predictions]
    print(markdown_table(args.benchmark, {n: score_file(args.benchmark, items, f, args.categories, args.allow_partial)
                                          for n, f in zip(names, args.predictions)}))


def main(argv=None):
    args = parser().parse_args(argv)
    try:  # OSError: a missing, unreadable or folder path
        if args.cmd == "heatmap":
            return cmd_heatmap(args)
        items = BENCHMARKS[args.benchmark].load(args.data, media=args.cmd == "run")
        dup = [k for k, n in Counter(str(it["id"]) for it in items).items() if n > 1]
        if dup:  # predictions are matched to items by id
            raise ValueError(f"{args.data}: {len(dup)} id(s) used by more than one item ({', '.join(dup[:5])}); "
                             "use the benchmark files as released")
        select(args.benchmark, items, args.categories)  # fail early on an unknown category
        if args.cmd == "run":
            cmd_run(args, items)
        elif args.cmd == "score":
            summary = score_file(args.benchmark, items, args.predictions, args.categories, args.allow_partial)
            write_summary(args.predictions, summary)
            print(json.dumps(summary, indent=2))
        else:
            cmd_table(args, items)
    except (ValueError, OSError, ImportError) as e:
        sys.exit(f"eval.py {args.cmd}: error: {e}")


if __name__ == "__main__":
    main()
