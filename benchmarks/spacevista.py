"""SpaceVista-Bench (Sun et al., "SpaceVista: All-Scale Visual Spatial Reasoning from mm to km"): its reader,
official answer extraction and aggregation.

  * reader: `bench_all_clean_corrected.json` as released on HF (SpaceVista/SpaceVista-Bench), a list of entries
    {id, input_type, question, answer, videos: [[frame paths]], metadata: {category, scale, original_type},
    annotations}; frame paths relative to the release folder. 16 frames at np.linspace(0, n-1, 16, dtype=int)
    (all of them when n <= 16). Points and boxes of `image_point_text` / `image_bbox_text` entries are drawn on
    their frames at full resolution as the official harness draws them (red-blue-green-yellow, filled circles,
    box outlines, dual boxes placed by image path); the prompt is the question, a blank line and the answer-type
    suffix;
  * scorer: the answer's <answer>...</answer> content (else the whole text), then by the type the answer has
    (classify_answer_type: a letter A-E -> mc, a float -> numerical, else text): mc = exact match of the
    leading letter A-D (fuzzy_matching), numerical = MRA over θ ∈ {0.50, 0.55, ..., 0.95} of
    1[|pred - gt| / |gt| <= 1 - θ] on the first number word, else the first number, in the answer
    (fuzzy_matching_num), text = case-insensitive exact match;
  * aggregation: the mean over items per category (Indoor / Outdoor / Tabletop / TinyTabletop) and overall over
    items (not the mean of the categories); per answer type and per original_type reported beside.

Run: through `python eval.py run|score|table --benchmark spacevista --data SpaceVista-Bench ...`.
Reference (pinned): github.com/PeiwenSun2000/SpaceVista @920a9b7, eval/metrics/spacevista_bench.py (_score_one,
compute_metrics), eval/metrics/common.py (extract_answer, fuzzy_matching, fuzzy_matching_num, to_float,
abs_dist_norm, mean_relative_accuracy), eval/evaluate_api.py (classify_answer_type, build_prompt, frame sampling,
render_annotations, --num_frames 16, --max_tokens 8196).
"""
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.common import need, read_json_list

TITLE = "SpaceVista-Bench"
MAX_NEW_TOKENS = 8196  # evaluate_api.py --max_tokens
FRAMES = 16  # evaluate_api.py --num_frames
COLUMNS = [("Indoor", "Indoor (m)"), ("Outdoor", "Outdoor (km)"), ("Tabletop", "Tabletop (cm)"),
           ("TinyTabletop", "TinyTabletop (mm)")]
SUBTYPES = {}
SUFFIX = {"mc": "Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> "
                "tags.",
          "numerical": "Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
          "text": "Please provide the answer within the <answer> </answer> tags."}
THINK = "Please provide the thinking process within the <think> </think> tags.\n"
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 128, 255), "yellow": (255, 215, 0)}
COLOR_ORDER = ["red", "blue", "green", "yellow"]
NUMBER_WORDS = {  # common.py fuzzy_matching_num, in its order: the first word of this list found wins
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "a": "1", "an": "1"}


def answer_type(answer) -> str:
    """evaluate_api.py classify_answer_type."""
    answer = str(answer).strip()
    if answer in ("A", "B", "C", "D", "E"):
        return "mc"
    return "numerical" if to_float(answer) is not None else "text"


def to_float(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def load(root: Path, media: bool = True) -> list[dict]:
    """ROOT/bench_all_clean_corrected.json (or the JSON itself); frame paths relative to its folder."""
    path = root if root.is_file() else root / "bench_all_clean_corrected.json"
    if not path.exists():
        raise FileNotFoundError(f"{root}: no bench_all_clean_corrected.json; download SpaceVista/SpaceVista-Bench "
                                "into this folder (or pass the JSON file)")
    base = path.parent
    rows = read_json_list(path, "use the released file", "entries")
    items = []
    for i, r in enumerate(rows):
        where = f"{path} entry {i}"
        need(r, ("id", "input_type", "question", "answer", "videos", "metadata"), where)
        need(r["metadata"], ("category", "original_type"), f"{where} metadata")
        category = r["metadata"]["category"]
        if category not in dict(COLUMNS):
            raise ValueError(f"{where}: unknown category {category!r}; expected one of {', '.join(dict(COLUMNS))}")
        kind = answer_type(r["answer"])
        item = dict(id=r["id"], category=category, original_type=r["metadata"]["original_type"],
                    input_type=r["input_type"], answer_type=kind, answer=str(r["answer"]),
                    prompt=f"{r['question']}\n\n{THINK}{SUFFIX[kind]}")
        if media:
            item.update(frames(r, base, where))
        items.append(item)
    return items


def frames(entry: dict, base: Path, where: str) -> dict:
    """The entry's 16 sampled frames: file paths, or PNG bytes where the official harness draws a point or box.
    Deviation: the harness then shrinks every frame to 448 px on its longest edge (JPEG, quality 85) for its API;
    here the frames go to the model's own input builder at their size."""
    videos = entry["videos"]
    paths = videos[0] if isinstance(videos, list) and videos and isinstance(videos[0], list) else None
    if not paths:
        raise ValueError(f"{where}: `videos` is not [[frame paths, ...]] (as released)")
    marks = annotations(entry, [str(p) for p in paths], where)
    paths = [str(p if Path(p).is_absolute() else base / p) for p in paths]
    n = len(paths)
    sampled = list(range(n)) if n <= FRAMES else np.linspace(0, n - 1, FRAMES, dtype=int).tolist()
    images, names = [paths[i] for i in sampled], [paths[i] for i in sampled]
    for k, orig in enumerate(sampled):
        # render_annotations: a mark on an unsampled frame goes to the nearest sampled one (the first on a tie)
        mine = [m for m in marks if min(sampled, key=lambda s: abs(s - m["frame"])) == orig]
        if mine:
            images[k] = draw(paths[orig], mine, f"{where} frame {orig}")
            names[k] = f"{paths[orig]} (with the entry's marks drawn)"
    return dict(images=images, image_names=names)


def annotations(entry: dict, paths: list[str], where: str) -> list[dict]:
    """evaluate_api.py build_annotation_list for points and boxes (`paths`: the entry's frames as released):
    [{type, frame, color, coords}]."""
    kind, ann = str(entry["input_type"]).lower(), entry.get("annotations") or {}
    if "mask" in kind:  # Deviation: masks are pickled arrays (np.load(allow_pickle=True)); not unpickled here
        raise ValueError(f"{where}: a {entry['input_type']} entry; its mask overlay (a pickled array) is not drawn "
                         "here: score its answers with eval.py score, or leave such entries out of the data file")
    out = []
    for key, typ in (("points", "point"), ("bboxes", "bbox")):
        if typ in kind:
            for i, a in enumerate(ann.get(key) or []):
                out.append(dict(type=typ, frame=a.get("image_index", 0), coords=a["coords"],
                                color=a.get("color") or COLOR_ORDER[i % len(COLOR_ORDER)]))
    dual = ann.get("dual_bbox")
    if dual and "bbox" in kind:  # the source box red, the target boxes blue, green, yellow, red, ...
        if dual.get("source_bbox"):
            out.append(dict(type="bbox", frame=frame_of(dual.get("source_image"), paths), coords=dual["source_bbox"],
                            color="red"))
        for j, box in enumerate(dual.get("target_bboxes") or []):
            out.append(dict(type="bbox", frame=frame_of(dual.get("target_image"), paths), coords=box,
                            color=COLOR_ORDER[(j + 1) % len(COLOR_ORDER)]))
    return out


def frame_of(image_path, paths: list[str]) -> int:
    """evaluate_api.py _find_frame_index: the frame a path names: the same path, else with images_8/ and images/
    swapped, else the first of the same file name, else frame 0."""
    if not image_path:
        return 0
    swapped = [image_path.replace(a, b) for a, b in (("/images_8/", "/images/"), ("/images/", "/images_8/"))
               if a in image_path]
    for p in [image_path] + swapped:
        if p in paths:
            return paths.index(p)
    names = [Path(p).name for p in paths]
    return names.index(Path(image_path).name) if Path(image_path).name in names else 0


def draw(path: str, marks: list[dict], name: str) -> bytes:
    """draw_annotations_on_pil: filled circles of radius max(8, 0.014 min(W, H)) at points given as [y, x],
    box outlines max(2, 0.004 min(W, H)) px wide at [x1, y1, x2, y2] clipped to the frame."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{name}: {path} not found")
    img = Image.open(path).convert("RGB")
    d, (w, h) = ImageDraw.Draw(img), img.size
    for m in marks:
        rgb = COLORS.get(m["color"], (255, 0, 0))
        if m["type"] == "point":
            p = m["coords"][0] if len(m["coords"]) == 1 else m["coords"]
            y, x = float(p[0]), float(p[1])
            if 0 <= x < w and 0 <= y < h:  # the official code skips a point off the frame
                r = max(8, int(0.014 * min(w, h)))
                d.ellipse((x - r, y - r, x + r, y + r), fill=rgb, outline=rgb, width=2)
        else:
            x1, y1, x2, y2 = np.asarray(m["coords"], float).ravel().tolist()
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
            x1, x2 = (max(0.0, min(v, w - 1)) for v in (x1, x2))
            y1, y2 = (max(0.0, min(v, h - 1)) for v in (y1, y2))
            if x2 > 0 and y2 > 0:  # a box left or above the frame clips to its edge and is skipped there
                d.rectangle((x1, y1, x2, y2), outline=rgb, width=max(2, int(0.004 * min(w, h))))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def extract_answer(text: str) -> str:
    """common.py extract_answer: the content of the first <answer>...</answer>, else the text unchanged."""
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL | re.IGNORECASE)
    return match.group(1).strip() if match else text


def fuzzy_matching(pred: str) -> str:
    """common.py fuzzy_matching: a leading letter A-D (any case) -> that capital letter, else the stripped text."""
    match = re.search(r"^\s*([A-D])\b", pred.strip(), re.IGNORECASE)
    return match.group(1).upper() if match else pred.strip()


def fuzzy_matching_num(pred: str) -> str:
    """common.py fuzzy_matching_num: the first of NUMBER_WORDS (in that list's order, not the text's) found as a
    word, else the first number in the text, else "None". "a 2 m gap" -> "1" ("a" is a number word)."""
    s = pred.strip().lower()
    for word, digit in NUMBER_WORDS.items():
        if re.search(r"\b" + re.escape(word) + r"\b", s):
            return digit
    m = re.search(r"(-?\d+(\.\d+)?)", s)
    return m.group(1) if m else "None"


def mean_relative_accuracy(pred, target) -> float:
    """common.py mra_5_95_5: thresholds np.linspace(0.5, 0.95, 10); the distance is |pred - gt| / |gt|
    (|pred - gt| when gt = 0), compared with `<=`. No number in the answer -> 0 (the official `except TypeError`)."""
    if pred is None or target is None:
        return 0.0
    dist = abs(pred - target) if target == 0.0 else abs((pred - target) / target)
    return float(np.mean(dist <= 1 - np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))))


def exact_match(pred, target) -> float:
    return float(str(pred).strip().lower() == str(target).strip().lower())


def score(item: dict, pred: str) -> dict:
    """spacevista_bench.py _score_one, by the answer's type; the line keeps the type and original_type."""
    extracted, kind = extract_answer(pred), item["answer_type"]
    if kind == "mc":
        extracted = fuzzy_matching(extracted)
        value = exact_match(extracted, item["answer"])
    elif kind == "numerical":
        extracted = fuzzy_matching_num(extracted)
        value = mean_relative_accuracy(to_float(extracted), to_float(item["answer"]))
    else:
        extracted = extract_answer(extracted)  # _score_one extracts twice on this path
        value = exact_match(extracted, item["answer"])
    return dict(extracted=extracted, score=value, answer_type=kind, original_type=item["original_type"])


def aggregate(cats: dict, counts: dict, lines: list[dict]) -> tuple[float, dict]:
    """compute_metrics: overall = the mean over items; beside it, per category the mean per answer type
    (mc accuracy, numerical MRA, text accuracy, 0-100) and per original_type the mean and count."""
    by_type, by_orig = {}, {}
    for x in lines:
        by_type.setdefault(x["category"], {}).setdefault(x["answer_type"], []).append(x["score"])
        by_orig.setdefault(x["original_type"], []).append(x["score"])
    answer_types = {c: {t: dict(score=100 * float(np.mean(v)), count=len(v)) for t, v in sorted(ts.items())}
                    for c, ts in sorted(by_type.items())}
    per_type = {t: dict(score=100 * float(np.mean(v)), count=len(v)) for t, v in sorted(by_orig.items())}
    return float(np.mean([x["score"] for x in lines])), dict(answer_types=answer_types, original_types=per_type)
