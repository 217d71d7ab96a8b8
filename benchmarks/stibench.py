"""STI-Bench (Li et al., "Are MLLMs Ready for Precise Spatial-Temporal World Understanding?"): its reader, official
answer extraction and aggregation.

  * reader: `qa.parquet` + `video/<Video>` as released on HF (MINT-SJTU/STI-Bench): `ID`, `Video`, `time_start`,
    `time_end`, `Question`, `Candidates` ({letter: text}, or that dict as a JSON string), `Answer` (a letter),
    `Task`, `Scene` (may be empty: then from the file name, scene_type); the prompt of opensource_test.py:
    "From {time_start} s to {time_end} s. {Question}\\n(A) ...\\n(B) ...\\nPlease output only the option letter!";
  * scorer: the first of six patterns that matches ("(A)", "Ans='C'", "Answer: B", "Option D", "A is correct",
    a letter ending the text with "." or ")"), case-insensitive, upper-cased; else the stripped text. Correct when
    its LAST character is a letter A-E equal to the answer ("The answer is B" -> "B"; "B, not A" -> "A");
  * aggregation: accuracy per task and overall over items; per scene (indoor / outdoor / desktop) beside.

Run: through `python eval.py run|score|table --benchmark stibench --data STI-Bench ... --frames 30`.
Reference (pinned): github.com/MINT-SJTU/STI-Bench @082810f, opensource_test.py (ANSWER_PATTERNS, extract_answer,
scene_type, the prompt, the `correct` column, max_new_tokens 512, at most 30 frames). Its answer extraction is
not SpaceVista's copy (eval/metrics/stibench.py: a seventh pattern, exact match, overall = the mean of the task
scores and an SR sub-score): docs/evaluation_ood.md.
"""
import json
import re
from pathlib import Path

from benchmarks.common import need, require

TITLE = "STI-Bench"
MAX_NEW_TOKENS = 512  # opensource_test.py model.generate
# The paper's eight tasks (Sec. 3): static, then dynamic understanding.
# Assumption: the `Task` column spells them as the paper and SpaceVista's copy of the scorer do.
COLUMNS = [(t, t) for t in ("Dimensional Measurement", "Spatial Relation", "3D Video Grounding",
                            "Displacement & Path Length", "Speed & Acceleration", "Ego-Centric Orientation",
                            "Trajectory Description", "Pose Estimation")]
SUBTYPES = {}
PATTERNS = [r"\(([A-E])\)", r"Ans\s*=\s*['\"]?([A-E])['\"]?", r"Answer\s*[:=]\s*([A-E])", r"Option\s+([A-E])",
            r"\b([A-E])\s*(?:is|was)\s*correct", r"\b([A-E])[\.\)]\s*$"]  # opensource_test.py ANSWER_PATTERNS


def scene_type(filename: str) -> str:
    """opensource_test.py scene_type: the scene a video's file name implies."""
    if "camera" in filename:
        return "outdoor"
    if filename.startswith("scene"):
        return "indoor"
    stem = filename.split(".")[0]
    return "desktop" if stem.isdigit() and len(stem) == 6 else "unknown"


def load(root: Path, media: bool = True) -> list[dict]:
    """ROOT/qa.parquet (or the parquet itself) and ROOT/video/<Video>; each item's `video` is that file less
    its .mp4 (benchmarks/media.py reads `<video>.mp4`, or a folder of its frames)."""
    pq = require("pyarrow.parquet", "pyarrow", "reading STI-Bench's qa.parquet")
    path = root if root.is_file() else root / "qa.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{root}: no qa.parquet; download MINT-SJTU/STI-Bench into this folder (qa.parquet "
                                "and video/)")
    tasks, base = dict(COLUMNS), path.parent
    items = []
    for i, r in enumerate(pq.read_table(path).to_pylist()):
        where = f"{path} row {i}"
        need(r, ("ID", "Video", "time_start", "time_end", "Question", "Candidates", "Answer", "Task"), where)
        if r["Task"] not in tasks:
            raise ValueError(f"{where}: unknown Task {r['Task']!r}; expected one of {', '.join(tasks)}")
        cands = r["Candidates"]
        if isinstance(cands, str):
            try:
                cands = json.loads(cands)
            except json.JSONDecodeError:
                cands = None
        if isinstance(cands, list):  # a parquet map column reads as [(key, value), ...]
            cands = dict(cands)
        if not isinstance(cands, dict) or not cands:
            raise ValueError(f"{where}: Candidates {r['Candidates']!r} is not a {{letter: option}} object")
        if r["Answer"] not in cands:
            raise ValueError(f"{where}: Answer {r['Answer']!r} is not one of its candidates {', '.join(cands)}")
        options = "\n".join(f"({k}) {v}" for k, v in cands.items() if v is not None)
        video = str(r["Video"])
        items.append(dict(
            id=r["ID"], category=r["Task"], answer=r["Answer"], scene=r.get("Scene") or scene_type(video),
            prompt=f"From {r['time_start']} s to {r['time_end']} s. {r['Question']}\n{options}\n"
                   "Please output only the option letter!",
            video=str(base / "video" / video.removesuffix(".mp4"))))
    return items


def extract(pred: str) -> str:
    """opensource_test.py: extract_answer(decoded) or decoded.strip()."""
    for pattern in PATTERNS:
        m = re.search(pattern, pred, flags=re.IGNORECASE | re.MULTILINE)
        if m:
            return m.group(1).upper()
    return pred.strip()


def score(item: dict, pred: str) -> dict:
    """The `correct` column: the extracted text's last character is a letter A-E and the answer. An empty answer
    (where the official code raises IndexError) -> wrong."""
    out = extract(pred)
    return dict(extracted=out, score=float(bool(out) and out[-1] in "ABCDE" and out[-1] == item["answer"]),
                scene=item["scene"])


def aggregate(cats: dict, counts: dict, lines: list[dict]) -> tuple[float, dict]:
    """Overall = the mean over items (df["correct"].mean()); per scene beside (0-100)."""
    scenes = {}
    for x in lines:
        scenes.setdefault(x["scene"], []).append(x["score"])
    return sum(x["score"] for x in lines) / len(lines), dict(
        scenes={s: 100 * sum(v) / len(v) for s, v in sorted(scenes.items())})
