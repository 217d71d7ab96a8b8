"""All-Angles Bench (Yeh et al.): its reader, VLMEvalKit's answer matching and the micro-mean overall.

  * reader: `data.json` (a list of {index, category, question, A, B, C, answer, image_path, ...}) + its image
    folders; the prompt of VLMEvalKit's ImageMCQDataset.build_prompt (hint lines commented out in the fork);
  * scorer: can_infer in exact-matching mode (no GPT judge): an unmatched answer is "Z", a miss;
  * aggregation: per category, overall = the mean hit over all items (report_acc's Overall).

Run: through `python eval.py run|score|table --benchmark allangles --data All-Angles-Bench ...`.
Reference (pinned): github.com/Chenyu-Wang567/All-Angles-Bench @0e1d210, VLMEvalkit/vlmeval/dataset/image_mcq.py
(build_prompt, mcq_vanilla_eval, report_acc), vlmeval/utils/matching_util.py (can_infer); Qwen2VLChat's
max_new_tokens 2048.
"""
import string
from pathlib import Path

import numpy as np

from benchmarks.common import need, read_json_list

TITLE = "All-Angles Bench"
MAX_NEW_TOKENS = 2048  # Qwen2VLChat's default in the fork
COLUMNS = [("camera_pose_estimation", "Cam. Pose"), ("manipulation", "Manip."), ("relative_direction", "Rel. Dir."),
           ("attribute_identification", "Attr. Id."), ("counting", "Count"), ("relative_distance", "Rel. Dist.")]
SUBTYPES = {}
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")


def load(root: Path, media: bool = True) -> list[dict]:
    """ROOT/data.json (or that file itself); image paths are relative to ROOT."""
    path, root = (root, root.parent) if root.is_file() else (root / "data.json", root)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; download ch-chenyu/All-Angles-Bench into {root}")
    rows = read_json_list(path, "download ch-chenyu/All-Angles-Bench again")
    items = []
    for i, r in enumerate(rows):
        where = f"{path} entry {i}"
        need(r, ("index", "category", "question", "answer", "image_path"), where)
        if r["category"] not in dict(COLUMNS):
            raise ValueError(f"{where}: unknown category {r['category']!r}; expected one of "
                             f"{', '.join(dict(COLUMNS))}")
        # build_choices: every column A..Z that is present and not NaN (its TSV reads "" as NaN)
        options = {c: r[c] for c in string.ascii_uppercase if r.get(c) is not None and r[c] == r[c] and r[c] != ""}
        if not options:
            raise ValueError(f"{where}: no option fields A, B, C")
        if r["answer"] not in options:  # mcq_vanilla_eval: hit iff the extracted letter == answer
            raise ValueError(f"{where}: answer {r['answer']!r} is not one of its option letters {', '.join(options)}")
        prompt = (f"Question: {r['question']}\nOptions:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
                  + "Please select the correct answer from the options above. \n")
        paths = [r["image_path"]] if isinstance(r["image_path"], str) else r["image_path"]
        items.append(dict(id=r["index"], category=r["category"], prompt=prompt, answer=r["answer"],
                          options=options, images=[str(root / p) for p in paths]))
    return items


def can_infer(pred: str, options: dict):
    """matching_util.py: can_infer = can_infer_option, else can_infer_text; False -> None.
    (Scored as with the VERBOSE env variable unset, its default.)"""
    if "Failed to obtain answer via API" not in pred:  # can_infer_option
        if any(r in pred for r in REFUSALS):
            return "Z"
        tokens = pred.translate(str.maketrans(".()[],:;!*#{}", " " * 13)).split()
        hits = [c for c in options if c in tokens]  # whole, case-sensitive letter tokens
        if len(hits) == 1:
            return hits[0]
        if not hits and "Z" in tokens:
            return "Z"
    texts = [c for c, o in options.items() if str(o).lower() in pred.lower()]  # can_infer_text: substring
    return texts[0] if len(texts) == 1 else None


def score(item: dict, pred: str) -> dict:
    extracted = can_infer(pred, item["options"]) or "Z"  # mcq_vanilla_eval: unmatched -> Z
    return dict(extracted=extracted, score=float(extracted == item["answer"]))


def aggregate(cats: dict, counts: dict, lines: list[dict]) -> tuple[float, dict]:
    """report_acc: Overall = the mean hit over all items (not the mean of the categories)."""
    return float(np.mean([line["score"] for line in lines])), {}
