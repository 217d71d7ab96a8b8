"""Downstream evaluation (GASP Table 1): All-Angles Bench, VSI-Bench and BLINK, read from their
released files, prompted and scored exactly as their official code does.

  * readers: VSI-Bench `test.jsonl` (or a parquet) + `<dataset>/<scene_name>.mp4` or a folder of
    pre-extracted frames, 32 frames at np.linspace(0, n-1, 32, dtype=int); All-Angles `data.json` +
    its image folders; BLINK `<Subtask>/val-*.parquet` (images embedded);
  * the model fed as each official harness feeds it (`--inputs official`, families.Processor): Qwen2/2.5-VL
    images aspect-kept by smart_resize within the harness's min/max pixels, VSI-Bench in Qwen VIDEO mode
    (2 frames per token group); LLaVA-NeXT-Video images through the LLaVA-NeXT anyres path, video frames
    resized on the short edge and centre-cropped, linear RoPE scaling as thinking-in-space sets it;
    LLaVA-OneVision VSI-Bench video; the conversation from the tokenizer's chat template.
    `--inputs train-size` feeds model.py's training inputs instead (fixed squares), to probe what training saw;
  * the official prompts, greedy batched generation with the stock HF model (model.load), one JSONL
    line per item written as it goes (an interrupted run resumes where it stopped), each line with an
    `inputs` record: mode (video / images), frame count, each visual item's grid (t, h, w) in patches,
    the number of visual tokens; the resolved settings in <out stem>.settings.json;
  * the official answer extraction and aggregation (one scorer for `run` and `score`):
      VSI-Bench   fuzzy_matching, exact match (MCA) / mean relative accuracy (NA); mean per question
                  type, Rel. Dir. = unweighted mean of easy/medium/hard, overall = mean of the 8 types;
      All-Angles  VLMEvalKit can_infer in exact-matching mode (no GPT judge), overall = micro mean;
      BLINK       analyze_answer; an answer that needs its GPT-3.5 fallback counts as wrong and is
                  reported as unresolved; overall = unweighted mean of the subtasks. A labelled, NOT official
                  second pass (VLMEvalKit can_infer: option letter with punctuation, option text) is reported
                  apart under "second_pass", never merged into "overall";
  * `score` checks coverage (items scored / items in the benchmark, per category, printed and stored in
    <stem>.summary.json), refuses duplicate ids, and refuses a partial or truncated file unless --allow-partial;
  * a markdown table in the paper's layout, one row per predictions file.
All scores are on the 0-100 scale.

Run (a checkpoint is any folder model.load reads, e.g. train.py's export):
  python eval.py run   --benchmark vsibench  --data VSI-Bench --model runs/gasp/export --out vsi_gasp.jsonl
  python eval.py run   --benchmark allangles --data All-Angles-Bench --model Qwen/Qwen2.5-VL-7B-Instruct \\
                       --out aa_base.jsonl --device cuda --dtype bfloat16 --batch-size 1   # reporting settings
  python eval.py run   --benchmark blink --data BLINK --model runs/gasp/export --out blink.jsonl --limit 5
  python eval.py score --benchmark vsibench --data VSI-Bench --predictions vsi_gasp.jsonl   # JSON summary
  python eval.py table --benchmark vsibench --data VSI-Bench --predictions vsi_base.jsonl vsi_gasp.jsonl
One process per GPU (split the work with --categories); there is nothing to gain from torchrun here.
Optional dependencies: pyarrow (parquet files: BLINK, VSI-Bench parquet), av (VSI-Bench mp4 videos).

References (the official code each part follows, pinned):
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
import math
import re
import string
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import data
from families import Processor

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
# Assumption: the text is recalled from that file, not copied: only the task names are certain.
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
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a JSON {type(row).__name__}, not an object with the fields {', '.join(fields)}")
    for f in fields:
        if f not in row:
            raise ValueError(f"{where}: missing field {f!r} (has: {', '.join(map(str, row))})")
        if row[f] is None:
            raise ValueError(f"{where}: field {f!r} is null")


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
        rows = []
        for n, line in enumerate(path.open(encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e}); the file holds one JSON object a line") from None
    items = []
    for i, r in enumerate(rows):
        where = f"{path} row {i}"
        need(r, ("id", "dataset", "scene_name", "question_type", "question", "ground_truth"), where)
        qt = r["question_type"]
        if qt not in VSI_MCA + VSI_NA:  # utils.py raises ValueError on any other type
            raise ValueError(f"{where}: unknown question_type {qt!r}; expected one of {', '.join(VSI_MCA + VSI_NA)}")
        # thinking-in-space utils.py: vsibench_doc_to_text (empty pre_prompt -> "These are frames of a video.")
        gt, options = r["ground_truth"], r.get("options")
        if qt in VSI_NA:
            target = vsi_to_float(gt)
            if target is None or not 0 < target < math.inf:  # MRA divides by it: |pred - gt| / gt
                raise ValueError(f"{where}: {qt} ground_truth {gt!r} is not a positive number")
            prompt = ("These are frames of a video.\n" + r["question"] +
                      "\nPlease answer the question using a single word or phrase.")
        elif not options:
            raise ValueError(f"{where}: {qt} question with no options")
        elif not isinstance(options, (list, tuple)) or not all(isinstance(o, str) and re.match(r"[A-Z]\.", o)
                                                                for o in options):
            raise ValueError(f"{where}: options {options!r} are not a list of lettered strings like "
                             "['A. Back', 'B. Right'] (as released)")
        elif not isinstance(gt, str) or gt.upper() not in [o[0] for o in options]:
            raise ValueError(f"{where}: ground_truth {gt!r} is not the letter of one of its options")
        else:
            prompt = "\n".join(["These are frames of a video.", r["question"], "Options:\n" + "\n".join(options),
                                "Answer with the option's letter from the given choices directly."])
        items.append(dict(id=r["id"], category=qt, prompt=prompt, answer=gt,
                          video=str(root / str(r["dataset"]) / str(r["scene_name"]))))  # ARKitScenes: digits
    return items


def load_allangles(root: Path, media: bool = True) -> list[dict]:
    """ROOT/data.json (or that file itself): a list of {index, category, question, A, B, C, answer, image_path, ...};
    image paths are relative to ROOT."""
    path, root = (root, root.parent) if root.is_file() else (root / "data.json", root)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; download ch-chenyu/All-Angles-Bench into {root}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e}); download ch-chenyu/All-Angles-Bench again") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a JSON {type(rows).__name__}, not the released list of questions")
    items = []
    for i, r in enumerate(rows):
        where = f"{path} entry {i}"
        need(r, ("index", "category", "question", "answer", "image_path"), where)
        if r["category"] not in dict(COLUMNS["allangles"]):
            raise ValueError(f"{where}: unknown category {r['category']!r}; expected one of "
                             f"{', '.join(dict(COLUMNS['allangles']))}")
        # VLMEvalKit build_choices: every column A..Z that is present and not NaN (its TSV reads "" as NaN)
        options = {c: r[c] for c in string.ascii_uppercase if r.get(c) is not None and r[c] == r[c] and r[c] != ""}
        if not options:
            raise ValueError(f"{where}: no option fields A, B, C")
        if r["answer"] not in options:  # mcq_vanilla_eval: hit iff the extracted letter == answer
            raise ValueError(f"{where}: answer {r['answer']!r} is not one of its option letters {', '.join(options)}")
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
            if not isinstance(r["choices"], list) or not r["choices"]:
                raise ValueError(f"{f} row {r['idx']}: choices {r['choices']!r} are not a list of option texts")
            letters = ["(A)", "(B)", "(C)", "(D)", "(E)"][:len(r["choices"])]  # analyze_answer's all_choices
            if r["answer"] not in letters:
                raise ValueError(f"{f} row {r['idx']}: answer {r['answer']!r} is not one of {', '.join(letters)}; "
                                 "use the val split as released (BLINK's test answers are hidden)")
            # test_benchmark.py load_prompt: the `prompt` field, with a disclaimer for three subtasks.
            # Deviation: the official GPT-4V query puts the text before the images; model.py puts images first.
            prompt = (BLINK_DISCLAIMER if subtask in BLINK_NEEDS_DISCLAIMER else "") + r["prompt"]
            item = dict(id=r["idx"], category=subtask, prompt=prompt, answer=r["answer"], choices=r["choices"],
                        images=[r[c].get("bytes") if isinstance(r[c], dict) else r[c]  # HF Image: {bytes, path}
                                for c in images if r[c] is not None])
            if not all(isinstance(x, bytes) for x in item["images"]):
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
    except (TypeError, ValueError):
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
    line = dict(id=item["id"], benchmark=benchmark, category=item["category"], prompt=item["prompt"],
                prediction=pred, extracted=extracted, answer=item["answer"], score=score)
    if benchmark == "blink" and extracted is None and isinstance(pred, str):
        line["second_pass"] = blink_second_pass(pred, item["choices"])
    return line


def blink_second_pass(pred: str, choices: list) -> str | None:
    """NOT the official scorer: a deterministic stand-in for BLINK's GPT-3.5 fallback, run only on answers
    analyze_answer leaves unresolved. VLMEvalKit's can_infer with the options (A) .. : a single option letter
    once punctuation is stripped ("The answer is (B).", "B.", "B) right"), else a single option text contained
    in the answer ("left"). Returns "(X)" or None; reported apart from the official score."""
    letter = allangles_can_infer(pred, dict(zip(string.ascii_uppercase, choices)))
    return f"({letter})" if letter and letter != "Z" else None


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
        out["unresolved"] = {c: sum(x["category"] == c and "second_pass" in x for x in lines) for c in cats}
        # Reported apart, never merged into "overall": the official answers plus blink_second_pass on the rest.
        second = {c: [] for c in cats}
        for x in lines:
            second[x["category"]].append(float((x.get("second_pass") or x["extracted"]) == x["answer"]))
        second_cats = {c: 100 * float(np.mean(v)) for c, v in second.items()}
        out["second_pass"] = dict(
            note="NOT official: BLINK's GPT-3.5 fallback replaced by VLMEvalKit can_infer on the unresolved answers",
            resolved={c: sum(x["category"] == c and x.get("second_pass") is not None for x in lines) for c in cats},
            still_unresolved={c: sum(x["category"] == c and "second_pass" in x and x["second_pass"] is None
                                     for x in lines) for c in cats},
            categories=second_cats, overall=sum(second_cats.values()) / len(second_cats))
    return out


def read_predictions(path: Path) -> tuple[dict, dict]:
    """{str(id): prediction} from JSONL lines {"id" (or "index"/"idx"): ..., "prediction": ...}
    (a missing prediction is kept as None, scored 0), and the problems found:
    {"duplicates": {id: [line numbers]}, "bad_lines": [line numbers that are no such object],
    "torn_last_line": its number if the file ends in half a line (an interrupted write), else None,
    "benchmarks": the `benchmark` fields its lines carry (`run` writes one on each line)}."""
    preds, seen, bad, torn, benchmarks = {}, {}, [], None, set()
    text = path.read_text(encoding="utf-8")  # JSON is UTF-8, whatever the locale
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            key = next(k for k in ("id", "index", "idx") if isinstance(obj, dict) and k in obj)
        except (ValueError, StopIteration):
            if n == len(lines) and not text.endswith("\n"):
                torn = n
            else:
                bad.append(n)
            continue
        seen.setdefault(str(obj[key]), []).append(n)
        preds[str(obj[key])] = obj.get("prediction")
        if "benchmark" in obj:
            benchmarks.add(str(obj["benchmark"]))
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    return preds, dict(duplicates=dups, bad_lines=bad, torn_last_line=torn, benchmarks=benchmarks)


def column(category: str) -> str:
    """The score column of a category: VSI-Bench's three Rel. Dir. sub-types share `object_rel_direction`."""
    return "object_rel_direction" if category in VSI_REL_DIR else category


def coverage(wanted: list[dict], scored: set) -> dict:
    """Items scored / items in the benchmark (of the chosen categories), overall and per category
    (VSI-Bench's three rel_direction sub-types pooled, as in the summary)."""
    total, have = Counter(column(it["category"]) for it in wanted), Counter()
    for it in wanted:
        have[column(it["category"])] += str(it["id"]) in scored
    return dict(scored=sum(have.values()), total=len(wanted),
                categories={c: [have[c], total[c]] for c in sorted(total)})


def score_file(benchmark: str, items: list[dict], path: Path, categories=None, allow_partial: bool = False) -> dict:
    """The summary of a predictions file, with its coverage. Refused (ValueError naming the fix): duplicate
    ids (always), and unless allow_partial: lines that are not predictions, a torn last line, or a file that
    lacks items of the chosen categories. With allow_partial these are scored as they are and counted."""
    by_id = {str(it["id"]): it for it in items}
    # Rel. Dir. is the mean of easy, medium and hard: a sub-type alone scores part of that column (coverage says so)
    wanted = select(benchmark, items, categories and [column(c) for c in categories])
    wanted_ids = {str(it["id"]) for it in wanted}
    preds, problems = read_predictions(path)
    if problems["benchmarks"] - {benchmark}:  # ids alone can match another benchmark's (0, 1, 2, ...)
        raise ValueError(f"{path}: written for {', '.join(sorted(problems['benchmarks']))}, not {benchmark}; "
                         "pass that --benchmark and its --data")
    if problems["duplicates"]:
        dups = list(problems["duplicates"].items())[:5]
        dup = "; ".join(f"id {k!r} on lines {', '.join(map(str, v))}" for k, v in dups)
        raise ValueError(f"{path}: {len(problems['duplicates'])} duplicate id(s): {dup}; keep one line per id")
    lines = []
    for key, pred in preds.items():
        if key not in by_id:
            raise ValueError(f"{path}: id {key!r} is not in the {benchmark} data; wrong --data or --benchmark?")
        if key in wanted_ids:
            lines.append(score_item(benchmark, by_id[key], pred))
    cov = coverage(wanted, {str(x["id"]) for x in lines})
    fix = "finish it with eval.py run --out (it resumes), or pass --allow-partial to score it as it is"
    for n in problems["bad_lines"]:
        print(f"warning: {path}:{n}: not a JSON object with an id; skipped", file=sys.stderr)
    if problems["torn_last_line"]:
        print(f"warning: {path}:{problems['torn_last_line']}: truncated last line (an interrupted write); "
              "skipped", file=sys.stderr)
    if not allow_partial:
        if problems["bad_lines"]:
            raise ValueError(f"{path}: line(s) {', '.join(map(str, problems['bad_lines'][:10]))} are not JSON objects "
                             "with an id; repair them, or pass --allow-partial to skip them")
        if problems["torn_last_line"]:
            raise ValueError(f"{path}:{problems['torn_last_line']}: truncated last line (an interrupted run); {fix}")
        if cov["scored"] < cov["total"]:
            short = ", ".join(f"{c} {a}/{b}" for c, (a, b) in cov["categories"].items() if a < b)
            raise ValueError(f"{path}: covers {cov['scored']} of {cov['total']} {benchmark} items ({short}); {fix}")
        malformed = [str(x["id"]) for x in lines if not isinstance(x["prediction"], str)]
        if malformed:  # e.g. the answers stored under another key: every item would silently score 0
            raise ValueError(f"{path}: {len(malformed)} line(s) have no string \"prediction\" (ids "
                             f"{', '.join(malformed[:5])}); write each answer as a string under \"prediction\", "
                             "or pass --allow-partial to score them as wrong")
    if not lines:
        raise ValueError(f"{path}: no prediction for any of the {len(wanted)} chosen {benchmark} items "
                         f"(it has {len(preds)}); check --predictions, --data and --categories")
    out = summarize(benchmark, lines)
    out["coverage"] = dict(cov, skipped_lines=len(problems["bad_lines"]) + bool(problems["torn_last_line"]))
    print(f"coverage: {cov['scored']}/{cov['total']} items scored; "
          + ", ".join(f"{c} {a}/{b}" for c, (a, b) in cov["categories"].items()), file=sys.stderr)
    return out


def markdown_table(benchmark: str, summaries: dict) -> str:
    """Rows = checkpoints; the paper's columns first, then the benchmark's other categories, then Overall."""
    present = {c for s in summaries.values() for c in s["categories"]}
    cols = [(c, label) for c, label in COLUMNS[benchmark] if c in present]
    lines = [f"**{TITLES[benchmark]}**", "", "| Method | " + " | ".join(lab for _, lab in cols) + " | Overall |",
             "|---" * (len(cols) + 2) + "|"]
    for name, s in summaries.items():
        cells = [f"{s['categories'][c]:.1f}" if c in s["categories"] else "–" for c, _ in cols]
        cov = s.get("coverage", {})
        if cov and cov["scored"] < cov["total"]:  # a partial file (--allow-partial) says so in its row
            name = f"{name} (partial: {cov['scored']}/{cov['total']} items)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['overall']:.1f} |")
    return "\n".join(lines)


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


def generate(vlm, tokenizer, build, items: list[dict], batch_size: int, max_new_tokens: int, n_frames: int = 32,
             context: int | None = None):
    """Greedy answers, yielded as (item, text, inputs record). `build(visuals, prompts, fps)` -> (batch, records)
    makes the model inputs (families.Processor.build). Batches hold items with equal numbers of
    images (LLaVA's tensors need that). A prompt plus answer longer than `context` positions is marked in its
    record (`over_context`: the prompt length), as nothing else would show it."""
    for _, group in itertools.groupby(items, key=lambda it: len(it.get("images", ()))):
        group = list(group)
        for i in range(0, len(group), batch_size):
            batch = group[i:i + batch_size]
            fps = [sampled_fps(it["video"], n_frames) if "video" in it else None for it in batch]
            inputs, records = build([visuals(it, n_frames) for it in batch], [it["prompt"] for it in batch], fps)
            for record, mask in zip(records, inputs.get("attention_mask", [None] * len(records))):
                if context and mask is not None and int(mask.sum()) + max_new_tokens > context:
                    record["over_context"] = int(mask.sum())
            inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
            if "pixel_values" in inputs or "pixel_values_videos" in inputs:
                key = "pixel_values" if "pixel_values" in inputs else "pixel_values_videos"
                inputs[key] = inputs[key].to(vlm.dtype)
            with torch.inference_mode():  # plain greedy: overrides sampling / repetition_penalty in generation_config
                ids = vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)
            texts = tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            yield from zip(batch, texts, records)


SETTINGS_KEYS = ("benchmark", "model", "inputs", "dtype", "frames", "max_new_tokens")  # must match on resume


def settings_path(out: Path) -> Path:
    return out.with_name(out.stem + ".settings.json")


def run_benchmark(benchmark: str, items: list[dict], out: Path, vlm_loader, batch_size: int = 1, max_new_tokens=None,
        n_frames: int = 32, inputs: str = "official", settings: dict | None = None) -> None:
    """Append one scored line per item not yet in `out`; the model is loaded only if work remains.
    The resolved settings go to `<out stem>.settings.json`; a resume with other settings is refused."""
    done, problems = read_predictions(out) if out.exists() else ({}, dict(benchmarks=set()))
    if problems["benchmarks"] - {benchmark}:  # its ids would mark this benchmark's items as done
        raise ValueError(f"{out} holds {', '.join(sorted(problems['benchmarks']))} predictions; use another --out")
    todo = [it for it in items if str(it["id"]) not in done]
    settings = dict(settings or {}, benchmark=benchmark, inputs=inputs, frames=n_frames, batch_size=batch_size,
                    max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[benchmark])
    if settings_path(out).exists() and done:
        old = json.loads(settings_path(out).read_text())
        diff = [k for k in SETTINGS_KEYS if k in old and k in settings and old[k] != settings[k]]
        if diff:
            changes = ", ".join(f"{k}: {old[k]!r} now {settings[k]!r}" for k in diff)
            raise ValueError(f"{out} was written with other settings ({changes}); use another --out, or the same "
                             "flags to resume")
    if not todo:
        return
    check_media(todo)
    todo.sort(key=lambda it: (len(it.get("images", ())), it.get("video", "")))  # one decode per video
    vlm, processor = vlm_loader()
    text_config = getattr(vlm.config, "text_config", vlm.config)
    context = getattr(text_config, "max_position_embeddings", None)
    if inputs == "official":  # the same Processor class, fed as the benchmark's harness feeds this family
        processor = Processor(vlm.config, processor.tokenizer, folder=processor.folder, benchmark=benchmark)
        if processor.feed.linear_rope:
            factor = rope_factor(n_frames, processor.frame_tokens, context)
            settings["rope"] = set_linear_rope(vlm, factor)
            context *= max(factor, 1)
    settings["harness"] = f"{inputs}: {processor.describe()}"
    build = processor.build
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
    with out.open("a", encoding="utf-8") as f, tqdm(total=len(todo), desc=f"{benchmark} -> {out.name}") as bar:
        for item, text, record in generate(vlm, processor.tokenizer, build, todo, batch_size,
                                           settings["max_new_tokens"], n_frames, context):
            # Assumption: the decoded text is stripped, as lmms-eval's model wrappers do
            line = dict(score_item(benchmark, item, text.strip()), inputs=record)
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            bar.update()
            over += "over_context" in record
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
    common.add_argument("--benchmark", required=True, choices=sorted(LOADERS), help="which benchmark")
    common.add_argument("--data", required=True, type=Path, help="the benchmark folder as released: VSI-Bench "
                        "test.jsonl + video folders; All-Angles data.json + images; BLINK <Subtask>/val-*.parquet")
    common.add_argument("--categories", nargs="+", help="only these categories (question types / subtasks)")
    r = sub.add_parser("run", parents=[common], help="generate answers, write JSONL as it goes, print the summary")
    r.add_argument("--model", required=True, help="checkpoint folder or HF id that model.load reads")
    r.add_argument("--out", required=True, type=Path, help="predictions JSONL; an existing one is resumed "
                   "(settings in <stem>.settings.json, summary in <stem>.summary.json)")
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
    r.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
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
        items = LOADERS[args.benchmark](args.data, media=args.cmd == "run")
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
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype_name = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
            load = {"device": device, "dtype": getattr(torch, dtype_name)}
            if args.frame_size:
                load["size"] = (args.frame_size, args.frame_size)
            settings = dict(model=str(args.model), dtype=dtype_name, device=str(device))
            print(f"eval.py run: {args.benchmark}, inputs {args.inputs}, dtype {dtype_name}, batch size "
                  f"{args.batch_size}, frames {args.frames}", file=sys.stderr)
            run_benchmark(args.benchmark, select(args.benchmark, items, args.categories, args.limit), args.out,
                lambda: model.load(args.model, **load), args.batch_size, args.max_new_tokens, args.frames,
                args.inputs, settings)
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
