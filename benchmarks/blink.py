"""BLINK (Fu et al.), val split: its reader, official answer extraction, aggregation and a labelled second pass.

  * reader: `<Subtask>/val-*.parquet` as released on HF (BLINK-Benchmark/BLINK), images embedded; the prompt of
    load_prompt: the `prompt` field, with a disclaimer before it for three subtasks;
  * scorer: analyze_answer. An answer that needs its GPT-3.5 fallback counts as wrong and is reported as
    unresolved;
  * aggregation: overall = the unweighted mean of the subtasks. A labelled, NOT official second pass (VLMEvalKit's
    can_infer: option letter with punctuation, option text) is reported apart under "second_pass", never merged
    into "overall".

Run: through `python eval.py run|score|table --benchmark blink --data BLINK ...`.
Reference (pinned): github.com/zeyofu/BLINK_Benchmark @2d6a779, eval/test_benchmark.py (load_prompt,
analyze_answer, query_model's max_tokens 1024), eval/evaluate.py (the mean of subtasks).
"""
import re
import string
from pathlib import Path

import numpy as np

from benchmarks.allangles import can_infer
from benchmarks.common import need, require

TITLE = "BLINK (val)"
MAX_NEW_TOKENS = 1024  # test_benchmark.py query_model
COLUMNS = [("Spatial_Relation", "Spa. Rela."), ("Relative_Depth", "Rel. Depth"),
           ("Multi-view_Reasoning", "Multi-View")] + [(s, s) for s in (
    "Art_Style", "Counting", "Forensic_Detection", "Functional_Correspondence", "IQ_Test", "Jigsaw",
    "Object_Localization", "Relative_Reflectance", "Semantic_Correspondence", "Visual_Correspondence",
    "Visual_Similarity")]
SUBTYPES = {}
# test_benchmark.py: need_disclaimer_tasks and the disclaimer put before their prompt.
# Assumption: the text is recalled from that file, not copied: only the task names are certain.
DISCLAIMER = ("Disclaimer: This is not to make unfair assumptions about the people in the image and you "
              "just need to give your assessment on this question. You don't need to identify the real "
              "people. You just need to analyze based on the information I gave you.\n\n")
NEEDS_DISCLAIMER = ("Forensic_Detection", "Jigsaw", "Art_Style")


def load(root: Path, media: bool = True) -> list[dict]:
    """ROOT/<Subtask>/val-*.parquet; test answers are hidden. Each item's `images` are the embedded bytes,
    `image_names` say where each came from (file, row, column) for error messages."""
    pq = require("pyarrow.parquet", "pyarrow", "reading BLINK's parquet files")
    files = sorted(root.glob("*/val-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no <Subtask>/val-*.parquet; download BLINK-Benchmark/BLINK here")
    fields = ["idx", "prompt", "choices", "answer"]
    items = []
    for f in files:
        subtask = f.parent.name  # the HF config name; the `sub_task` column's spelling is unconfirmed
        if subtask not in dict(COLUMNS):
            raise ValueError(f"{f}: unknown BLINK subtask folder {subtask!r}; expected one of "
                             f"{', '.join(dict(COLUMNS))}")
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
            # Deviation: the official GPT-4V query puts the text before the images; model.py puts images first.
            prompt = (DISCLAIMER if subtask in NEEDS_DISCLAIMER else "") + r["prompt"]
            present = [c for c in images if r[c] is not None]
            item = dict(id=r["idx"], category=subtask, prompt=prompt, answer=r["answer"], choices=r["choices"],
                        images=[r[c].get("bytes") if isinstance(r[c], dict) else r[c]  # HF Image: {bytes, path}
                                for c in present],
                        image_names=[f"{f} row {r['idx']} column {c}" for c in present])
            if not all(isinstance(x, bytes) for x in item["images"]):
                raise ValueError(f"{f} row {r['idx']}: an image without embedded bytes; use the HF parquet files")
            items.append(item)
    return items


def analyze_answer(pred: str, n_choices: int):
    """test_benchmark.py: analyze_answer. None where the official code asks GPT-3.5 to map the answer."""
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


def second_pass(pred: str, choices: list) -> str | None:
    """NOT the official scorer: a deterministic stand-in for BLINK's GPT-3.5 fallback, run only on answers
    analyze_answer leaves unresolved. VLMEvalKit's can_infer with the options (A) .. : a single option letter
    once punctuation is stripped ("The answer is (B).", "B.", "B) right"), else a single option text contained
    in the answer ("left"). Returns "(X)" or None; reported apart from the official score."""
    letter = can_infer(pred, dict(zip(string.ascii_uppercase, choices)))
    return f"({letter})" if letter and letter != "Z" else None


def score(item: dict, pred: str) -> dict:
    """The official extraction and score; an unresolved answer also carries its (unofficial) second pass."""
    extracted = analyze_answer(pred, len(item["choices"]))
    out = dict(extracted=extracted, score=float(extracted == item["answer"]))
    if extracted is None:
        out["second_pass"] = second_pass(pred, item["choices"])
    return out


def aggregate(cats: dict, counts: dict, lines: list[dict]) -> tuple[float, dict]:
    """evaluate.py: overall = the unweighted mean of the subtask accuracies. Extra fields: the unresolved count
    per subtask, and the second pass reported apart (0-100), never merged into the overall."""
    unresolved = {c: sum(x["category"] == c and "second_pass" in x for x in lines) for c in cats}
    second = {c: [] for c in cats}
    for x in lines:
        second[x["category"]].append(float((x.get("second_pass") or x["extracted"]) == x["answer"]))
    second_cats = {c: 100 * float(np.mean(v)) for c, v in second.items()}
    return sum(cats.values()) / len(cats), dict(unresolved=unresolved, second_pass=dict(
        note="NOT official: BLINK's GPT-3.5 fallback replaced by VLMEvalKit can_infer on the unresolved answers",
        resolved={c: sum(x["category"] == c and x.get("second_pass") is not None for x in lines) for c in cats},
        still_unresolved={c: sum(x["category"] == c and "second_pass" in x and x["second_pass"] is None
                                 for x in lines) for c in cats},
        categories=second_cats, overall=sum(second_cats.values()) / len(second_cats)))
