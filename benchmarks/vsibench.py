"""VSI-Bench (Yang et al., "Thinking in Space"): its reader, official answer extraction and aggregation.

  * reader: `test.jsonl` (or the released parquet) + `<dataset>/<scene_name>.mp4` or a folder of pre-extracted
    frames; 32 frames at np.linspace(0, n-1, 32, dtype=int) (benchmarks/media.py reads them);
  * scorer: fuzzy_matching, then exact match (multiple-choice types) or mean relative accuracy (numerical types);
  * aggregation: mean per question type, Rel. Dir. = unweighted mean of its easy / medium / hard sub-types,
    overall = mean of the 8 types.

Run: through `python eval.py run|score|table --benchmark vsibench --data VSI-Bench ...`.
Reference (pinned): github.com/vision-x-nyu/thinking-in-space @51e089c, lmms_eval/tasks/vsibench/utils.py
(vsibench_doc_to_text, fuzzy_matching, to_float, mean_relative_accuracy, exact_match, vsibench_aggregate_results)
and the task's yaml (max_new_tokens 16).
"""
import json
import math
import re
from pathlib import Path

import numpy as np

from benchmarks.common import need, read_text, require

TITLE = "VSI-Bench"
MAX_NEW_TOKENS = 16  # the VSI-Bench task yaml
REL_DIR = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
MCA = REL_DIR + ("object_rel_distance", "route_planning", "obj_appearance_order")
NA = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
# (category, column label): the paper's Table 1 columns first. Obj. Count is a VSI-Bench column there (its
# baseline rows are the published VSI-Bench numbers, e.g. VLM-3R 70.2).
COLUMNS = [("object_counting", "Obj. Count"), ("route_planning", "Route"), ("object_rel_direction", "Rel. Dir."),
           ("obj_appearance_order", "App. Order"), ("object_abs_distance", "Abs. Dist."),
           ("object_size_estimation", "Obj. Size"), ("room_size_estimation", "Room Size"),
           ("object_rel_distance", "Rel. Dist.")]
SUBTYPES = {"object_rel_direction": REL_DIR}  # a column scored as the mean of these question types


def load(root: Path, media: bool = True) -> list[dict]:
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
        for n, line in enumerate(read_text(path).split("\n"), 1):
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
        if qt not in MCA + NA:  # utils.py raises ValueError on any other type
            raise ValueError(f"{where}: unknown question_type {qt!r}; expected one of {', '.join(MCA + NA)}")
        # utils.py: vsibench_doc_to_text (empty pre_prompt -> "These are frames of a video.")
        gt, options = r["ground_truth"], r.get("options")
        if qt in NA:
            target = to_float(gt)
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


def fuzzy_matching(pred: str) -> str:
    return pred.split(" ")[0].rstrip(".").strip()  # utils.py: fuzzy_matching


def to_float(s):
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


def score(item: dict, pred: str) -> dict:
    """The extracted answer and its score: exact match (multiple choice) or MRA (numerical answers)."""
    extracted = fuzzy_matching(pred)
    if item["category"] in NA:
        return dict(extracted=extracted, score=mean_relative_accuracy(to_float(extracted), to_float(item["answer"])))
    return dict(extracted=extracted, score=float(extracted.lower() == item["answer"].lower()))  # exact_match


def aggregate(cats: dict, counts: dict, lines: list[dict]) -> tuple[float, dict]:
    """utils.py vsibench_aggregate_results: Rel. Dir. = (easy + medium + hard) / 3, placed last; overall = the
    mean of the question types, each weighted equally. Deviation: a run lacking a sub-type averages those present.
    Returns (overall, extra fields); `cats` and `counts` are pooled in place."""
    rel = [cats.pop(t) for t in REL_DIR if t in cats]
    if rel:
        cats["object_rel_direction"] = sum(rel) / len(rel)
        counts["object_rel_direction"] = sum(counts.pop(t) for t in REL_DIR if t in counts)
    return sum(cats.values()) / len(cats), {}
