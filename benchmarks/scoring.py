"""Predictions files -> scores: one scored line per answer, the summary by each benchmark's official
aggregation, its coverage, and the markdown table in the paper's layout. All scores are on the 0-100 scale.

  * a predictions file is JSONL, one {"id" (or "index" / "idx"), "prediction", ...} a line, UTF-8;
  * `score_file` checks coverage (items scored / items in the benchmark, per category), refuses duplicate ids,
    another benchmark's file, and a partial or truncated file unless allow_partial;
  * the table: rows = predictions files, the paper's columns first, then the benchmark's other categories.

Run: through `python eval.py score|table ...`; tests are `python -m pytest tests/test_eval.py -q`.
"""
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks import BENCHMARKS
from benchmarks.common import item_hash, read_text


def select(benchmark: str, items: list[dict], categories=None, limit=None) -> list[dict]:
    """Items of the given categories (a column with sub-types, like VSI-Bench's `object_rel_direction`, means all
    of them), at most `limit` per category, in file order."""
    b = BENCHMARKS[benchmark]
    if categories:
        known = [c for c, _ in b.columns] + [t for ts in b.subtypes.values() for t in ts]
        bad = [c for c in categories if c not in known]
        if bad:
            raise ValueError(f"unknown {benchmark} category {', '.join(map(repr, bad))}; "
                             f"choose from {', '.join(known)}")
        categories = set(categories).union(*(b.subtypes.get(c, ()) for c in categories))
    seen, out = Counter(), []
    for it in items:
        if (not categories or it["category"] in categories) and (not limit or seen[it["category"]] < limit):
            seen[it["category"]] += 1
            out.append(it)
    return out


def column(benchmark: str, category: str) -> str:
    """The score column of a category: VSI-Bench's three Rel. Dir. sub-types share `object_rel_direction`."""
    return next((c for c, ts in BENCHMARKS[benchmark].subtypes.items() if category in ts), category)


def score_item(benchmark: str, item: dict, pred) -> dict:
    """One output line: the item, the raw prediction, the extracted answer and its 0/1 (or MRA) score, and the
    item's fingerprint (what a resume checks). A prediction that is not a string is malformed: no extracted
    answer, score 0."""
    scored = BENCHMARKS[benchmark].score(item, pred) if isinstance(pred, str) else dict(extracted=None, score=0.0)
    line = dict(id=item["id"], benchmark=benchmark, category=item["category"], prompt=item["prompt"],
                prediction=pred, extracted=scored.pop("extracted"), answer=item["answer"], score=scored.pop("score"))
    return dict(line, **scored, item_hash=item_hash(item))


def aggregate(benchmark: str, lines: list[dict]) -> dict:
    """Per-category and overall scores (x100) by the benchmark's official aggregation."""
    if not lines:
        raise ValueError("no predictions to score")
    by_cat = {}
    for line in lines:
        by_cat.setdefault(line["category"], []).append(line["score"])
    cats = {c: float(np.mean(s)) for c, s in sorted(by_cat.items())}  # pandas groupby: sorted keys, .mean()
    counts = {c: len(s) for c, s in sorted(by_cat.items())}
    overall, extra = BENCHMARKS[benchmark].aggregate(cats, counts, lines)
    return dict(benchmark=benchmark, overall=100 * overall, categories={c: 100 * v for c, v in cats.items()},
                n=len(lines), counts=counts, malformed=sum(not isinstance(x["prediction"], str) for x in lines),
                **extra)


def read_predictions(path: Path) -> tuple[dict, dict]:
    """{str(id): prediction} from JSONL lines {"id" (or "index"/"idx"): ..., "prediction": ...}
    (a missing prediction is kept as None, scored 0), and what else the file holds:
    {"duplicates": {id: [line numbers]}, "bad_lines": [line numbers that are no such object],
    "torn_last_line": its number if the file ends in half a line (an interrupted write), else None,
    "benchmarks": the `benchmark` fields its lines carry (`run` writes one on each line),
    "item_hashes": {id: the `item_hash` its line carries, or None}}."""
    preds, seen, bad, torn, benchmarks, hashes = {}, {}, [], None, set(), {}
    text = read_text(path)
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
        hashes[str(obj[key])] = obj.get("item_hash")
        if "benchmark" in obj:
            benchmarks.add(str(obj["benchmark"]))
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    return preds, dict(duplicates=dups, bad_lines=bad, torn_last_line=torn, benchmarks=benchmarks, item_hashes=hashes)


def coverage(benchmark: str, wanted: list[dict], scored: set) -> dict:
    """Items scored / items in the benchmark (of the chosen categories), overall and per column
    (VSI-Bench's three rel_direction sub-types pooled, as in the summary)."""
    total, have = Counter(column(benchmark, it["category"]) for it in wanted), Counter()
    for it in wanted:
        have[column(benchmark, it["category"])] += str(it["id"]) in scored
    return dict(scored=sum(have.values()), total=len(wanted),
                categories={c: [have[c], total[c]] for c in sorted(total)})


def score_file(benchmark: str, items: list[dict], path: Path, categories=None, allow_partial: bool = False) -> dict:
    """The summary of a predictions file, with its coverage. Refused (ValueError naming the fix): duplicate
    ids (always), and unless allow_partial: lines that are not predictions, a torn last line, or a file that
    lacks items of the chosen categories. With allow_partial these are scored as they are and counted."""
    by_id = {str(it["id"]): it for it in items}
    # Rel. Dir. is the mean of easy, medium and hard: a sub-type alone scores part of that column (coverage says so)
    wanted = select(benchmark, items, categories and [column(benchmark, c) for c in categories])
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
    cov = coverage(benchmark, wanted, {str(x["id"]) for x in lines})
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
    out = aggregate(benchmark, lines)
    out["coverage"] = dict(cov, skipped_lines=len(problems["bad_lines"]) + bool(problems["torn_last_line"]))
    print(f"coverage: {cov['scored']}/{cov['total']} items scored; "
          + ", ".join(f"{c} {a}/{b}" for c, (a, b) in cov["categories"].items()), file=sys.stderr)
    return out


def markdown_table(benchmark: str, summaries: dict) -> str:
    """Rows = checkpoints; the paper's columns first, then the benchmark's other categories, then Overall."""
    b = BENCHMARKS[benchmark]
    present = {c for s in summaries.values() for c in s["categories"]}
    cols = [(c, label) for c, label in b.columns if c in present]
    lines = [f"**{b.title}**", "", "| Method | " + " | ".join(lab for _, lab in cols) + " | Overall |",
             "|---" * (len(cols) + 2) + "|"]
    for name, s in summaries.items():
        cells = [f"{s['categories'][c]:.1f}" if c in s["categories"] else "–" for c, _ in cols]
        cov = s.get("coverage", {})
        if cov and cov["scored"] < cov["total"]:  # a partial file (--allow-partial) says so in its row
            name = f"{name} (partial: {cov['scored']}/{cov['total']} items)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['overall']:.1f} |")
    return "\n".join(lines)
