"""MMSI-Bench (Yang et al., multi-image spatial intelligence): its reader, official answer extraction and
aggregation.

  * reader: `MMSI_Bench.parquet` as released on HF (RunsenXu/MMSI-Bench): `id`, `images` (a list of encoded
    image bytes), `question_type`, `question` (the options are part of it: "...\\nOptions: A. ..., B. ..."),
    `answer` (one letter A-D); the prompt is the question, a newline and the official post-prompt;
  * scorer: extract_single_choice_with_word_boundary: the text inside ``...``, then inside `...`, then inside
    {...}, then the first standalone capital A-D not followed by a space and a word (so "A bike" is no answer);
    correct when that letter, lowercased, equals the answer lowercased. An answer it cannot read goes to an LLM
    upstream; here it counts as wrong and is reported as unresolved;
  * aggregation: accuracy per question type and overall over items (1,000 items, each weighted equally).

Run: through `python eval.py run|score|table --benchmark mmsi --data MMSI-Bench ...`.
Reference (pinned): github.com/InternRobotics/MMSI-Bench @026beb1, README.md "Answer Extraction" (the post-prompt
and extract_single_choice_with_word_boundary, the README's copy of the repository's VLMEvalKit dataset code: the
prompt is `question + "\\n" + post_prompt`, images first; overall = correct / total).
Variants that are NOT this scorer: docs/evaluation_ood.md.
"""
import re
from pathlib import Path

from benchmarks.common import need, require

TITLE = "MMSI-Bench"
# Assumption: the official harness is VLMEvalKit, where the generation length is each model wrapper's own
# (2048 for Qwen2-VL / Qwen2.5-VL); lmms-eval's mmsi_bench yaml says 2048 too.
MAX_NEW_TOKENS = 2048
POST_PROMPT = ("\nAnswer with the option's letter from the given choices directly. Enclose the option's letter "
               "within ``.")
# The 11 question types as the parquet spells them (en dashes), in the paper's order.
COLUMNS = [("Positional Relationship (Cam.–Cam.)", "Cam.-Cam."), ("Positional Relationship (Obj.–Obj.)", "Obj.-Obj."),
           ("Positional Relationship (Reg.–Reg.)", "Reg.-Reg."), ("Positional Relationship (Cam.–Obj.)", "Cam.-Obj."),
           ("Positional Relationship (Obj.–Reg.)", "Obj.-Reg."), ("Positional Relationship (Cam.–Reg.)", "Cam.-Reg."),
           ("Attribute (Meas.)", "Meas."), ("Attribute (Appr.)", "Appr."), ("Motion (Cam.)", "Motion Cam."),
           ("Motion (Obj.)", "Motion Obj."), ("MSR", "MSR")]
SUBTYPES = {}


def load(root: Path, media: bool = True) -> list[dict]:
    """ROOT/MMSI_Bench.parquet (or the parquet file itself). Each item's `images` are the embedded bytes."""
    pq = require("pyarrow.parquet", "pyarrow", "reading MMSI-Bench's parquet file")
    path = root if root.is_file() else root / "MMSI_Bench.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{root}: no MMSI_Bench.parquet; download RunsenXu/MMSI-Bench into this folder "
                                "(or pass the parquet file)")
    fields = ["id", "question_type", "question", "answer"]
    names = pq.read_schema(path).names
    rows = pq.read_table(path, columns=[c for c in fields + (["images"] if media else []) if c in names]).to_pylist()
    types = dict(COLUMNS)
    items = []
    for i, r in enumerate(rows):
        where = f"{path} row {i}"
        need(r, fields, where)
        if r["question_type"] not in types:
            raise ValueError(f"{where}: unknown question_type {r['question_type']!r}; expected one of "
                             f"{', '.join(types)}")
        if r["answer"] not in ("A", "B", "C", "D"):
            raise ValueError(f"{where}: answer {r['answer']!r} is not one of the letters A-D; use the release as is")
        item = dict(id=r["id"], category=r["question_type"], prompt=r["question"] + POST_PROMPT, answer=r["answer"])
        if media:
            images = [x.get("bytes") if isinstance(x, dict) else x for x in (r.get("images") or [])]
            if not images or not all(isinstance(x, bytes) for x in images):
                raise ValueError(f"{where}: `images` is not a list of encoded image bytes; use the HF parquet file")
            item.update(images=images, image_names=[f"{path} row {i} (id {r['id']}) image {k}"
                                                    for k in range(len(images))])
        items.append(item)
    return items


def extract(pred: str):
    """README.md: extract_single_choice_with_word_boundary, its extraction half. The letter, or None where the
    official code falls back to an LLM. "The answer is (B)." -> "B"; "A and B" -> "B" ("A" is followed by a
    space and a word); "b" -> None (the pattern is case-sensitive)."""
    for pattern in (r"``([^`]*)``", r"`([^`]*)`", r"\{([^}]*)\}"):
        match = re.search(pattern, pred)
        if match:
            pred = match.group(1)
    match = re.search(r"\b[A-D]\b(?!\s[a-zA-Z])", pred)
    return match.group() if match else None


def score(item: dict, pred: str) -> dict:
    """The official extraction and comparison (answer.lower() == extracted.lower()[0]); unresolved -> wrong."""
    extracted = extract(pred)
    if extracted is None:  # Deviation: no LLM fallback; scored wrong, counted as unresolved
        return dict(extracted=None, score=0.0, unresolved=True)
    return dict(extracted=extracted, score=float(item["answer"].lower().strip() == extracted.lower()[0]))


def aggregate(cats: dict, counts: dict, lines: list[dict]) -> tuple[float, dict]:
    """Overall = correct / total over items (not the mean of the question types). Extra: unresolved answers per
    question type (no letter the official regex reads; upstream an LLM would map them)."""
    unresolved = {c: sum(x["category"] == c and bool(x.get("unresolved")) for x in lines) for c in cats}
    return sum(x["score"] for x in lines) / len(lines), dict(unresolved=unresolved)
