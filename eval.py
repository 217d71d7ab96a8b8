"""Downstream evaluation (GASP Table 1): All-Angles Bench, VSI-Bench and BLINK, read from their
released files, prompted and scored exactly as their official code does.

  * readers: VSI-Bench `test.jsonl` (or a parquet) + `<dataset>/<scene_name>.mp4` or a folder of
    pre-extracted frames, 32 frames at np.linspace(0, n-1, 32, dtype=int); All-Angles `data.json` +
    its image folders; BLINK `<Subtask>/val-*.parquet` (images embedded);
  * the official prompts, greedy batched generation with the stock HF model (model.load), one JSONL
    line per item written as it goes (an interrupted run resumes where it stopped);
  * the official answer extraction and aggregation (one scorer for `run` and `score`):
      VSI-Bench   fuzzy_matching, exact match (MCA) / mean relative accuracy (NA); mean per question
                  type, Rel. Dir. = unweighted mean of easy/medium/hard, overall = mean of the 8 types;
      All-Angles  VLMEvalKit can_infer in exact-matching mode (no GPT judge), overall = micro mean;
      BLINK       analyze_answer; an answer that needs its GPT-3.5 fallback counts as wrong and is
                  reported as unresolved; overall = unweighted mean of the subtasks;
  * a markdown table in the paper's layout, one row per predictions file.
All scores are on the 0-100 scale.

Run (a checkpoint is any folder model.load reads, e.g. train.py's export):
  python eval.py run   --benchmark vsibench  --data VSI-Bench --model runs/gasp/export --out vsi_gasp.jsonl
  python eval.py run   --benchmark allangles --data All-Angles-Bench --model Qwen/Qwen2.5-VL-7B-Instruct \
                       --out aa_base.jsonl --device cuda --dtype bfloat16 --batch-size 8
  python eval.py run   --benchmark blink --data BLINK --model runs/gasp/export --out blink.jsonl --limit 5
  python eval.py score --benchmark vsibench --data VSI-Bench --predictions vsi_gasp.jsonl   # JSON summary
  python eval.py table --benchmark vsibench --data VSI-Bench --predictions vsi_base.jsonl vsi_gasp.jsonl
One process per GPU (split the work with --categories); there is nothing to gain from torchrun here.
Optional dependencies: pyarrow (parquet files: BLINK, VSI-Bench parquet), av (VSI-Bench mp4 videos).

References (research/benchmarks.md has the details):
  VSI-Bench   github.com/vision-x-nyu/thinking-in-space @51e089c, lmms_eval/tasks/vsibench/utils.py
  All-Angles  github.com/Chenyu-Wang567/All-Angles-Bench @0e1d210, VLMEvalkit/vlmeval/dataset/image_mcq.py,
              vlmeval/utils/matching_util.py (can_infer)
  BLINK       github.com/zeyofu/BLINK_Benchmark @2d6a779, eval/test_benchmark.py (load_prompt, analyze_answer)
  GASP        arXiv 2605.30231, Table 1
"""

import argparse
import functools
import importlib
import io
import itertools
import json
import re
import string
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import data

VSI_REL_DIR = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
VSI_MCA = VSI_REL_DIR + ("object_rel_distance", "route_planning", "obj_appearance_order")
VSI_NA = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
# (category, column label): the paper's Table 1 columns first, then the benchmark's other categories.
# Obj. Count is a VSI-Bench column there (its baseline rows are the published VSI-Bench numbers, e.g. VLM-3R 70.2).
COLUMNS = {
    "allangles": [("camera_pose_estimation", "Cam. Pose"), ("manipulation", "Manip."),
                  ("relative_direction", "Rel. Dir."), ("attribute_identification", "Attr. Id."),
                  ("counting", "Count"), ("relative_distance", "Rel. Dist.")],
    "vsibench": [("object_counting", "Obj. Count"), ("route_planning", "Route"),
                 ("object_rel_direction", "Rel. Dir."), ("obj_appearance_order", "App. Order"),
                 ("object_abs_distance", "Abs. Dist."), ("object_size_estimation", "Obj. Size"),
                 ("room_size_estimation", "Room Size"), ("object_rel_distance", "Rel. Dist.")],
    "blink": [("Spatial_Relation", "Spa. Rela."), ("Relative_Depth", "Rel. Depth"),
              ("Multi-view_Reasoning", "Multi-View")] + [(s, s) for s in (
        "Art_Style", "Counting", "Forensic_Detection", "Functional_Correspondence", "IQ_Test", "Jigsaw",
        "Object_Localization", "Relative_Reflectance", "Semantic_Correspondence", "Visual_Correspondence",
        "Visual_Similarity")],
}
TITLES = {"allangles": "All-Angles Bench", "vsibench": "VSI-Bench", "blink": "BLINK (val)"}
# Official generation lengths: VSI-Bench yaml 16; All-Angles Qwen2VLChat 2048; BLINK query_model 1024.
MAX_NEW_TOKENS = {"vsibench": 16, "allangles": 2048, "blink": 1024}
# BLINK test_benchmark.py: need_disclaimer_tasks and the disclaimer put before their prompt.
# Assumption: the text is recalled from that file; research/benchmarks.md names the tasks but not the text.
BLINK_DISCLAIMER = ("Disclaimer: This is not to make unfair assumptions about the people in the image and you "
                    "just need to give your assessment on this question. You don't need to identify the real "
                    "people. You just need to analyze based on the information I gave you.\n\n")
BLINK_NEEDS_DISCLAIMER = ("Forensic_Detection", "Jigsaw", "Art_Style")
AA_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
               "I'm sorry, but without the image provided", "Cannot determine the answer")


def require(module: str, package: str, why: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{why} needs the optional package {package}: pip install {package}") from None


def need(row: dict, fields, where: str):
    for f in fields:
        if f not in row:
            raise ValueError(f"{where}: missing field {f!r} (has: {', '.join(map(str, row))})")


# ----------------------------------------------------------------------------- readers

def load_vsibench(root: Path, media: bool = True) -> list[dict]:
    """ROOT/test.jsonl (else ROOT/test-00000-of-00001.parquet), or the question file itself."""
    if root.is_file():
        path, root = root, root.parent
    else:
        path = next((p for p in (root / "test.jsonl", root / "test-00000-of-00001.parquet") if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{root}: no test.jsonl or test-00000-of-00001.parquet; download "
                                    "nyu-visionx/VSI-Bench into this folder (or pass the question file)")
    if path.suffix == ".parquet":
        rows = require("pyarrow.parquet", "pyarrow", f"reading {path}").read_table(path).to_pylist()
    else:
        rows = [json.loads(line) for line in path.open() if line.strip()]
    items = []
    for i, r in enumerate(rows):
        where = f"{path} row {i}"
        need(r, ("id", "dataset", "scene_name", "question_type", "question", "ground_truth"), where)
        qt = r["question_type"]
        if qt not in VSI_MCA + VSI_NA:  # utils.py raises ValueError on any other type
            raise ValueError(f"{where}: unknown question_type {qt!r}; expected one of {', '.join(VSI_MCA + VSI_NA)}")
        # thinking-in-space utils.py: vsibench_doc_to_text (empty pre_prompt -> "These are frames of a video.")
        if qt in VSI_NA:
            prompt = ("These are frames of a video.\n" + r["question"] +
                      "\nPlease answer the question using a single word or phrase.")
        elif not r.get("options"):
            raise ValueError(f"{where}: {qt} question with no options")
        else:
            prompt = "\n".join(["These are frames of a video.", r["question"], "Options:\n" + "\n".join(r["options"]),
                                "Answer with the option's letter from the given choices directly."])
        items.append(dict(id=r["id"], category=qt, prompt=prompt, answer=r["ground_truth"],
                          video=str(root / r["dataset"] / r["scene_name"])))
    return items


def load_allangles(root: Path, media: bool = True) -> list[dict]:
    """ROOT/data.json: a list of {index, category, question, A, B, C, answer, image_path, ...}."""
    path = root / "data.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; download ch-chenyu/All-Angles-Bench into {root}")
    items = []
    for i, r in enumerate(json.loads(path.read_text())):
        where = f"{path} entry {i}"
        need(r, ("index", "category", "question", "answer", "image_path"), where)
        if r["category"] not in dict(COLUMNS["allangles"]):
            raise ValueError(f"{where}: unknown category {r['category']!r}; expected one of "
                             f"{', '.join(dict(COLUMNS['allangles']))}")
        # VLMEvalKit build_choices: every column A..Z that is present and not NaN
        options = {c: r[c] for c in string.ascii_uppercase if r.get(c) is not None}
        if not options:
            raise ValueError(f"{where}: no option fields A, B, C")
        # image_mcq.py ImageMCQDataset.build_prompt (hint lines commented out in the fork)
        prompt = (f"Question: {r['question']}\nOptions:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
                  + "Please select the correct answer from the options above. \n")
        paths = [r["image_path"]] if isinstance(r["image_path"], str) else r["image_path"]
        items.append(dict(id=r["index"], category=r["category"], prompt=prompt, answer=r["answer"],
                          options=options, images=[str(root / p) for p in paths]))
    return items


def load_blink(root: Path, media: bool = True) -> list[dict]:
    """ROOT/<Subtask>/val-*.parquet as released on HF (BLINK-Benchmark/BLINK); test answers are hidden."""
    pq = require("pyarrow.parquet", "pyarrow", "reading BLINK's parquet files")
    files = sorted(root.glob("*/val-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no <Subtask>/val-*.parquet; download BLINK-Benchmark/BLINK here")
    fields = ["idx", "prompt", "choices", "answer"]
    items = []
    for f in files:
        subtask = f.parent.name  # the HF config name; the `sub_task` column's spelling is unconfirmed
        if subtask not in dict(COLUMNS["blink"]):
            raise ValueError(f"{f}: unknown BLINK subtask folder {subtask!r}; expected one of "
                             f"{', '.join(dict(COLUMNS['blink']))}")
        names = pq.read_schema(f).names
        images = [c for c in names if re.fullmatch(r"image_\d", c)] if media else []
        for r in pq.read_table(f, columns=[c for c in fields + images if c in names]).to_pylist():
            need(r, fields, f"{f} row {r.get('idx')}")
            # test_benchmark.py load_prompt: the `prompt` field, with a disclaimer for three subtasks.
            # Deviation: the official GPT-4V query puts the text before the images; model.py puts images first.
            prompt = (BLINK_DISCLAIMER if subtask in BLINK_NEEDS_DISCLAIMER else "") + r["prompt"]
            item = dict(id=r["idx"], category=subtask, prompt=prompt, answer=r["answer"], choices=r["choices"],
                        images=[r[c]["bytes"] for c in images if r[c] is not None])
            if None in item["images"]:
                raise ValueError(f"{f} row {r['idx']}: an image without embedded bytes; use the HF parquet files")
            items.append(item)
    return items


LOADERS = {"vsibench": load_vsibench, "allangles": load_allangles, "blink": load_blink}


def select(benchmark: str, items: list[dict], categories=None, limit=None) -> list[dict]:
    """Items of the given categories (VSI-Bench: `object_rel_direction` = its three sub-types),
    at most `limit` per category, in file order."""
    if categories:
        known = [c for c, _ in COLUMNS[benchmark]] + (list(VSI_REL_DIR) if benchmark == "vsibench" else [])
        bad = [c for c in categories if c not in known]
        if bad:
            raise ValueError(f"unknown {benchmark} category {', '.join(map(repr, bad))}; "
                             f"choose from {', '.join(known)}")
        categories = set(categories) | (set(VSI_REL_DIR) if "object_rel_direction" in categories else set())
    seen, out = Counter(), []
    for it in items:
        if (not categories or it["category"] in categories) and (not limit or seen[it["category"]] < limit):
            seen[it["category"]] += 1
            out.append(it)
    return out


# ----------------------------------------------------------------------------- frames

def video_file(base: str) -> Path:
    """`<root>/<dataset>/<scene_name>.mp4`, else a folder `<root>/<dataset>/<scene_name>/` of frames."""
    for p in (Path(base + ".mp4"), Path(base)):
        if p.exists():
            return p
    raise FileNotFoundError(f"neither {base}.mp4 nor a frame folder {base}/ exists; unzip arkitscenes.zip, "
                            "scannet.zip and scannetpp.zip from nyu-visionx/VSI-Bench into the data root")


@functools.lru_cache(maxsize=4)
def read_frames(base: str, n: int) -> tuple:
    """n frames at np.linspace(0, total-1, n, dtype=int), as (H, W, 3) uint8 arrays
    (thinking-in-space llava_onevision.py load_video; decord there, PyAV or a frame folder here)."""
    return tuple(data.read_clip(video_file(base), n))


def visuals(item: dict, n_frames: int) -> list:
    """The item's frames (VSI-Bench) or images (All-Angles: files, BLINK: embedded bytes), in order."""
    if "video" in item:
        return list(read_frames(item["video"], n_frames))
    return [Image.open(io.BytesIO(x) if isinstance(x, bytes) else x).convert("RGB") for x in item["images"]]


def check_media(items: list[dict]):
    """Fail before loading the model if any video or image is missing, or PyAV for an mp4."""
    for it in items:
        if "video" in it and video_file(it["video"]).is_file():
            require("av", "av", f"decoding {it['video']}.mp4 (or pre-extract its frames into {it['video']}/)")
        for p in it.get("images", ()):
            if not isinstance(p, bytes) and not Path(p).exists():
                raise FileNotFoundError(f"item {it['id']}: image {p} not found")


# ----------------------------------------------------------------------------- official scorers

def vsi_fuzzy_matching(pred: str) -> str:
    return pred.split(" ")[0].rstrip(".").strip()  # thinking-in-space utils.py: fuzzy_matching


def vsi_to_float(s):
    try:  # utils.py: to_float, any failure -> None
        return float(s)
    except ValueError:
        return None


def mean_relative_accuracy(pred, target, start=0.5, end=0.95, interval=0.05) -> float:
    """MRA = mean over θ ∈ C of 1[|pred - gt| / gt <= 1 - θ] (utils.py: mean_relative_accuracy). C comes from
    numpy.linspace exactly as there (10 values, 0.9 is 0.8999999999999999) and the test is `<=`, not the
    paper's `<`: pred 12 vs gt 10 -> 0.6. A pred that is no number -> 0 (the official `except TypeError`)."""
    if pred is None or target is None:
        return 0.0
    thresholds = np.linspace(start, end, int((end - start) / interval + 2))
    return float(np.mean(abs(pred - target) / target <= 1 - thresholds))


def allangles_can_infer(pred: str, options: dict):
    """VLMEvalKit matching_util.py: can_infer = can_infer_option, else can_infer_text; False -> None.
    (We score as with the VERBOSE env variable unset, its default.)"""
    if "Failed to obtain answer via API" not in pred:  # can_infer_option
        if any(r in pred for r in AA_REFUSALS):
            return "Z"
        tokens = pred.translate(str.maketrans(".()[],:;!*#{}", " " * 13)).split()
        hits = [c for c in options if c in tokens]  # whole, case-sensitive letter tokens
        if len(hits) == 1:
            return hits[0]
        if not hits and "Z" in tokens:
            return "Z"
    texts = [c for c, o in options.items() if str(o).lower() in pred.lower()]  # can_infer_text: substring
    return texts[0] if len(texts) == 1 else None


def blink_analyze_answer(pred: str, n_choices: int):
    """BLINK test_benchmark.py: analyze_answer. None where the official code asks GPT-3.5 to map the answer."""
    all_choices = ["(A)", "(B)", "(C)", "(D)", "(E)"][:n_choices]
    if pred in ("A", "B", "C", "D", "E"):
        return f"({pred})"
    if pred in ("(A)", "(B)", "(C)", "(D)", "(E)"):
        return pred
    found = set(all_choices) & set(pred.split())
    found_last = set(all_choices) & set(pred.split("\n\n")[-1].split())  # the last paragraph
    if (len(found) != 1 and len(found_last) != 1) or len(found) < 1:
        return None  # Deviation: no GPT-3.5 fallback; scored wrong, counted as unresolved
    return (found_last if len(found_last) == 1 else found).pop()


def score_item(benchmark: str, item: dict, pred) -> dict:
    """One output line: the item, the raw prediction, the extracted answer and its 0/1 (or MRA) score.
    A prediction that is not a string is malformed: no extracted answer, score 0."""
    if not isinstance(pred, str):
        extracted, score = None, 0.0
    elif benchmark == "vsibench":
        extracted = vsi_fuzzy_matching(pred)
        if item["category"] in VSI_NA:
            score = mean_relative_accuracy(vsi_to_float(extracted), vsi_to_float(item["answer"]))
        else:  # utils.py: exact_match
            score = float(extracted.lower() == item["answer"].lower())
    elif benchmark == "allangles":
        extracted = allangles_can_infer(pred, item["options"]) or "Z"  # mcq_vanilla_eval: unmatched -> Z
        score = float(extracted == item["answer"])
    else:
        extracted = blink_analyze_answer(pred, len(item["choices"]))
        score = float(extracted == item["answer"])
    return dict(id=item["id"], benchmark=benchmark, category=item["category"], prompt=item["prompt"],
                prediction=pred, extracted=extracted, answer=item["answer"], score=score)


def summarize(benchmark: str, lines: list[dict]) -> dict:
    """Per-category and overall scores (x100) by the benchmark's official aggregation."""
    if not lines:
        raise ValueError("no predictions to score")
    by_cat = {}
    for line in lines:
        by_cat.setdefault(line["category"], []).append(line["score"])
    cats = {c: float(np.mean(s)) for c, s in sorted(by_cat.items())}  # pandas groupby: sorted keys, .mean()
    counts = {c: len(s) for c, s in sorted(by_cat.items())}
    if benchmark == "vsibench":  # utils.py: vsibench_aggregate_results
        rel = [cats.pop(t) for t in VSI_REL_DIR if t in cats]
        if rel:  # official: (easy + medium + hard) / 3. Deviation: a run lacking one averages those present
            cats["object_rel_direction"] = sum(rel) / len(rel)
            counts["object_rel_direction"] = sum(counts.pop(t) for t in VSI_REL_DIR if t in counts)
        overall = sum(cats.values()) / len(cats)  # each question type weighted equally, rel_direction last
    elif benchmark == "allangles":  # VLMEvalKit report_acc: Overall = mean hit over all items
        overall = float(np.mean([line["score"] for line in lines]))
    else:  # BLINK evaluate.py: total = unweighted mean of the subtask accuracies
        overall = sum(cats.values()) / len(cats)
    out = dict(benchmark=benchmark, overall=100 * overall, categories={c: 100 * v for c, v in cats.items()},
               n=len(lines), counts=counts, malformed=sum(not isinstance(x["prediction"], str) for x in lines))
    if benchmark == "blink":
        out["unresolved"] = {c: sum(x["category"] == c and x["extracted"] is None and
                                    isinstance(x["prediction"], str) for x in lines) for c in by_cat}
    return out


def read_predictions(path: Path) -> dict:
    """{str(id): prediction} from JSONL lines {"id" (or "index"/"idx"): ..., "prediction": ...}; lines that
    are not such objects are skipped with a warning, a missing prediction is kept as None (scored 0)."""
    preds = {}
    for n, line in enumerate(path.open(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            key = next(k for k in ("id", "index", "idx") if isinstance(obj, dict) and k in obj)
        except (ValueError, StopIteration):
            print(f"warning: {path}:{n}: not a JSON object with an id; skipped", file=sys.stderr)
            continue
        preds[str(obj[key])] = obj.get("prediction")
    return preds


def score_file(benchmark: str, items: list[dict], path: Path, categories=None) -> dict:
    """The summary of a predictions file over the items it holds (of the chosen categories)."""
    by_id = {str(it["id"]): it for it in items}
    wanted = {str(it["id"]) for it in select(benchmark, items, categories)}
    lines = []
    for key, pred in read_predictions(path).items():
        if key not in by_id:
            raise ValueError(f"{path}: id {key!r} is not in the {benchmark} data; wrong --data or --benchmark?")
        if key in wanted:
            lines.append(score_item(benchmark, by_id[key], pred))
    return summarize(benchmark, lines)


def markdown_table(benchmark: str, summaries: dict) -> str:
    """Rows = checkpoints; the paper's columns first, then the benchmark's other categories, then Overall."""
    present = {c for s in summaries.values() for c in s["categories"]}
    cols = [(c, label) for c, label in COLUMNS[benchmark] if c in present]
    lines = [f"**{TITLES[benchmark]}**", "", "| Method | " + " | ".join(lab for _, lab in cols) + " | Overall |",
             "|---" * (len(cols) + 2) + "|"]
    for name, s in summaries.items():
        cells = [f"{s['categories'][c]:.1f}" if c in s["categories"] else "–" for c, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['overall']:.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- generation

def generate(vlm, processor, items: list[dict], batch_size: int, max_new_tokens: int, n_frames: int = 32):
    """Greedy answers, yielded as (item, text). Batches hold items with equal numbers of images
    (LLaVA-NeXT-Video needs that); frames go in as a list of images, before the prompt text."""
    import torch
    for _, group in itertools.groupby(items, key=lambda it: len(it.get("images", ()))):
        group = list(group)
        for i in range(0, len(group), batch_size):
            batch = group[i:i + batch_size]
            inputs = processor([visuals(it, n_frames) for it in batch], [it["prompt"] for it in batch])
            inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
            with torch.inference_mode():  # plain greedy: overrides sampling / repetition_penalty in generation_config
                ids = vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)
            texts = processor.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            yield from zip(batch, texts)


def run(benchmark: str, items: list[dict], out: Path, vlm_loader, batch_size: int = 1, max_new_tokens=None,
        n_frames: int = 32) -> None:
    """Append one scored line per item not yet in `out`; the model is loaded only if work remains."""
    done = set(read_predictions(out)) if out.exists() else set()
    todo = [it for it in items if str(it["id"]) not in done]
    if not todo:
        return
    check_media(todo)
    todo.sort(key=lambda it: (len(it.get("images", ())), it.get("video", "")))  # one decode per video
    vlm, processor = vlm_loader()
    out.parent.mkdir(parents=True, exist_ok=True)
    torn = out.exists() and out.stat().st_size and not out.read_bytes().endswith(b"\n")
    with out.open("a") as f, tqdm(total=len(todo), desc=f"{benchmark} -> {out.name}") as bar:
        f.write("\n" if torn else "")  # an interrupted write left half a line: start on a fresh one
        for item, text in generate(vlm, processor, todo, batch_size, max_new_tokens or MAX_NEW_TOKENS[benchmark],
                                   n_frames):
            # Assumption: the decoded text is stripped, as lmms-eval's model wrappers do
            f.write(json.dumps(score_item(benchmark, item, text.strip()), ensure_ascii=False) + "\n")
            f.flush()
            bar.update()


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--benchmark", required=True, choices=sorted(LOADERS), help="which benchmark")
    common.add_argument("--data", required=True, type=Path, help="the benchmark folder as released: VSI-Bench "
                        "test.jsonl + video folders; All-Angles data.json + images; BLINK <Subtask>/val-*.parquet")
    common.add_argument("--categories", nargs="+", help="only these categories (question types / subtasks)")
    r = sub.add_parser("run", parents=[common], help="generate answers, write JSONL as it goes, print the summary")
    r.add_argument("--model", required=True, help="checkpoint folder or HF id that model.load reads")
    r.add_argument("--out", required=True, type=Path, help="predictions JSONL; an existing one is resumed")
    r.add_argument("--batch-size", type=int, default=1, help="items per generate() call")
    r.add_argument("--limit", type=int, help="at most this many items per category (quick runs)")
    r.add_argument("--frames", type=int, default=32, help="VSI-Bench frames per video (official: 32)")
    r.add_argument("--max-new-tokens", type=int, help="default: the official 16 / 2048 / 1024 (VSI / AA / BLINK)")
    r.add_argument("--frame-size", type=int, help="side in px every frame/image is resized to (default: model.py's)")
    r.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype (default float32)")
    s = sub.add_parser("score", parents=[common], help="re-score a predictions file, print the summary JSON")
    s.add_argument("--predictions", required=True, type=Path, help="JSONL of {\"id\": ..., \"prediction\": ...}")
    t = sub.add_parser("table", parents=[common], help="markdown table, one row per predictions file")
    t.add_argument("--predictions", required=True, type=Path, nargs="+", help="one JSONL per checkpoint")
    args = p.parse_args(argv)
    try:
        items = LOADERS[args.benchmark](args.data, media=args.cmd == "run")
        select(args.benchmark, items, args.categories)  # fail early on an unknown category
        if args.cmd == "run":
            import torch
            import model
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = getattr(torch, args.dtype) if args.dtype else None
            size = args.frame_size and (args.frame_size, args.frame_size)
            run(args.benchmark, select(args.benchmark, items, args.categories, args.limit), args.out,
                lambda: model.load(args.model, device=device, dtype=dtype, size=size), args.batch_size,
                args.max_new_tokens, args.frames)
            summary = score_file(args.benchmark, items, args.out, args.categories)
            print(markdown_table(args.benchmark, {args.out.stem: summary}), file=sys.stderr)
            print(json.dumps(summary, indent=2))
        elif args.cmd == "score":
            print(json.dumps(score_file(args.benchmark, items, args.predictions, args.categories), indent=2))
        else:
            names = [f.stem for f in args.predictions]
            names = names if len(set(names)) == len(names) else [str(f) for f in args.predictions]
            print(markdown_table(args.benchmark, {n: score_file(args.benchmark, items, f, args.categories)
                                                  for n, f in zip(names, args.predictions)}))
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"eval.py {args.cmd}: error: {e}")


if __name__ == "__main__":
    main()
