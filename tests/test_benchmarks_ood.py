"""The out-of-domain benchmarks (MMSI-Bench, SpaceVista-Bench) against their official scorers, worked by hand from
the pinned code, on fixtures written in the released layouts; their resume and coverage through eval.py's run
loop; and the generalisation heatmap drawn from score files."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import eval as E
from benchmarks import BENCHMARKS, media, mmsi, scoring, spacevista, stibench
from test_eval import fake_model  # the stand-in model of eval.py run
from figures import heatmap as H

CAM, MOT = "Positional Relationship (Cam.–Cam.)", "Motion (Cam.)"
# id, question_type, answer, prediction, its official score (README extract_single_choice_with_word_boundary)
MMSI_ROWS = [
    (0, CAM, "B", "The answer is (B).", 1.0),  # "(B)." -> B
    (1, CAM, "B", "b", 0.0),  # the pattern is case-sensitive: no letter (unresolved, an LLM upstream)
    (2, CAM, "C", "A and C", 1.0),  # "A" is followed by a space and a word: skipped; C
    (3, MOT, "A", "``A``", 1.0),
    (4, MOT, "D", "A, D", 0.0),  # the first standalone letter wins: A
    (5, MOT, "A", "A bike", 0.0),  # "A bike" is an article: unresolved
    (6, "MSR", "C", "C", 1.0),
    (7, "MSR", "D", "{d}", 0.0),  # braces stripped, then lowercase d: unresolved
    (8, "MSR", "C", "Answer: `C` (not B)", 1.0),  # the backtick content first
    (9, "MSR", "A", "A", 1.0),
]


def png(value, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size[::-1], 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def mmsi_root(tmp_path):
    """MMSI_Bench.parquet as released: images a list of encoded bytes, the options inside the question."""
    root = tmp_path / "MMSI-Bench"
    root.mkdir(parents=True)
    n = len(MMSI_ROWS)
    table = pa.table(dict(
        id=[r[0] for r in MMSI_ROWS],
        images=pa.array([[png(10 * r[0]), png(10 * r[0] + 5)] + [png(1)] * (r[1] == "MSR") for r in MMSI_ROWS],
                        type=pa.list_(pa.binary())),
        question_type=[r[1] for r in MMSI_ROWS],
        question=[f"Question {r[0]}?\nOptions: A. north, B. south, C. west, D. east" for r in MMSI_ROWS],
        answer=[r[2] for r in MMSI_ROWS], thought=["because"] * n, mean_normed_duration_seconds=[1.5] * n,
        difficulty=["easy"] * n))
    pq.write_table(table, root / "MMSI_Bench.parquet")
    return root


def write_preds(path, preds):
    path.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in preds.items()))
    return path


def cli(capsys, *argv):
    E.main([str(a) for a in argv])
    return capsys.readouterr()


@pytest.mark.parametrize("pred, letter", [
    ("The answer is (B).", "B"), ("B", "B"), ("b", None), ("A and C", "C"), ("A, D", "A"), ("A bike", None),
    ("``A``", "A"), ("{d}", None), ("{D}", "D"), ("Answer: `C` (not B)", "C"), ("I think A is right", None),
    ("Option B is correct", None), ("(C)", "C"), ("", None)])
def test_mmsi_extraction(pred, letter):
    assert mmsi.extract(pred) == letter


def test_mmsi_prompt_and_images(tmp_path):
    items = {it["id"]: it for it in mmsi.load(mmsi_root(tmp_path))}
    assert items[0]["prompt"] == ("Question 0?\nOptions: A. north, B. south, C. west, D. east\nAnswer with the "
                                  "option's letter from the given choices directly. Enclose the option's letter "
                                  "within ``.")
    assert items[0]["category"] == CAM and items[0]["answer"] == "B"
    pics = media.visuals(items[6], 32)
    assert len(pics) == 3 and np.asarray(pics[1])[0, 0, 0] == 65  # images in order, decoded
    assert "images" not in mmsi.load(mmsi_root(tmp_path / "b"), media=False)[0]


def test_mmsi_official_scores(tmp_path, capsys):
    root = mmsi_root(tmp_path)
    preds = write_preds(tmp_path / "m.jsonl", {r[0]: r[3] for r in MMSI_ROWS})
    s = json.loads(cli(capsys, "score", "--benchmark", "mmsi", "--data", root, "--predictions", preds).out)
    assert s["categories"] == pytest.approx({CAM: 200 / 3, MOT: 100 / 3, "MSR": 75.0})
    assert s["overall"] == pytest.approx(60.0)  # 6 of 10 items, not the mean of the types (58.3)
    assert s["unresolved"] == {CAM: 1, MOT: 1, "MSR": 1}
    lines = {it["id"]: scoring.score_item("mmsi", it, r[3]) for it, r in zip(mmsi.load(root, media=False), MMSI_ROWS)}
    assert {k: x["score"] for k, x in lines.items()} == {r[0]: r[4] for r in MMSI_ROWS}


def test_mmsi_bad_answers_are_named(tmp_path):
    root = mmsi_root(tmp_path)
    t = pq.read_table(root / "MMSI_Bench.parquet")
    pq.write_table(t.set_column(t.schema.get_field_index("answer"), "answer", pa.array(["E"] + ["A"] * 9)),
                   root / "MMSI_Bench.parquet")
    with pytest.raises(ValueError, match=r"row 0: answer 'E' is not one of the letters A-D"):
        mmsi.load(root)


# ----------------------------------------------------------------------------- SpaceVista-Bench

# id, category, answer, prediction, its official score (spacevista_bench.py _score_one, common.py)
SV_ROWS = [
    (0, "Indoor", "B", "<think>the chair is...</think><answer>b) the chair</answer>", 1.0),  # leading letter, any case
    (1, "Indoor", "2.5", "<answer>3.1 meters</answer>", 0.6),  # |3.1 - 2.5| / 2.5 = 0.24: θ in 0.50..0.75
    (2, "Indoor", "4", "<answer>a 4 m gap</answer>", 0.0),  # "a" is a number word: 1; 0.75 off
    (3, "Outdoor", "left", "<answer> Left </answer>", 1.0),  # text: case-insensitive exact match
    (4, "Outdoor", "left", "The object is on the left", 0.0),  # no tag: the whole text
    (5, "Outdoor", "100", "about two hundred", 0.0),  # "two" -> 2
    (6, "Tabletop", "10", "<answer>10.4 cm</answer>", 1.0),  # 4 % off: every threshold
    (7, "Tabletop", "A", "(A)", 0.0),  # no leading letter: "(A)" != "A"
]
FRAMES = 20  # sampled: linspace(0, 19, 16, int) = 0 1 2 3 5 6 7 8 10 11 12 13 15 16 17 19


def spacevista_root(tmp_path, extra=()):
    """bench_all_clean_corrected.json + a folder of 20 frames (64 x 48, frame i filled with 10 i)."""
    root = tmp_path / "SpaceVista-Bench"
    (root / "frames" / "s1").mkdir(parents=True)
    paths = [f"frames/s1/{i:05d}.png" for i in range(FRAMES)]
    for i, p in enumerate(paths):
        (root / p).write_bytes(png(10 * i, (64, 48)))
    entries = []
    for i, cat, ans, _, _ in SV_ROWS:
        e = dict(id=i, input_type="image_text", question=f"Question {i}?", answer=ans, videos=[paths],
                 metadata=dict(category=cat, scale="m", original_type=f"TYPE_{i % 3}"), annotations={})
        if i == 0:
            e.update(input_type="image_point_text", annotations=dict(points=[dict(coords=[10, 20], image_index=0)]))
        if i == 1:  # frame 4 is not sampled: the box goes to the nearest sampled frame, 3 (the first of 3 and 5)
            e.update(input_type="image_bbox_text",
                     annotations=dict(bboxes=[dict(coords=[5, 5, 40, 30], image_index=4, color="blue")]))
        entries.append(e)
    (root / "bench_all_clean_corrected.json").write_text(json.dumps(entries + list(extra)))
    return root


@pytest.mark.parametrize("answer, pred, score", [(r[2], r[3], r[4]) for r in SV_ROWS] + [
    ("3", "<ANSWER>3</ANSWER>", 1.0), ("3", "two or three", 0.4),  # number words in the list's order: 2, 1/3 off
    ("0", "0.32", 0.4),  # gt 0: the distance is |pred|
    ("2", "-2", 0.0), ("5", "none", 0.0), ("C", "c", 1.0),
    ("D", "d) the lamp", 1.0), ("E", "E) the lamp", 0.0),  # fuzzy_matching reads a leading A-D only
    ("12", "10", 0.7)])  # 2/12 = 0.167 <= 1 - θ for θ in 0.50..0.80
def test_spacevista_official_scorer(answer, pred, score):
    item = dict(answer=answer, answer_type=spacevista.answer_type(answer), original_type="T")
    assert spacevista.score(item, pred)["score"] == pytest.approx(score)


def test_spacevista_prompts(tmp_path):
    items = {it["id"]: it for it in spacevista.load(spacevista_root(tmp_path), media=False)}
    assert items[0]["prompt"] == ("Question 0?\n\nPlease provide the thinking process within the <think> </think> "
                                  "tags.\nPlease provide only the single option letter (e.g., A, B, C, D, etc.) within "
                                  "the <answer> </answer> tags.")
    assert items[1]["prompt"].endswith("Please provide the numerical value (e.g., 42 or 3.14) within the <answer> "
                                       "</answer> tags.")
    assert items[3]["prompt"].endswith("\nPlease provide the answer within the <answer> </answer> tags.")
    assert [items[k]["answer_type"] for k in (0, 1, 3)] == ["mc", "numerical", "text"]


def test_spacevista_frames_and_marks(tmp_path):
    items = {it["id"]: it for it in spacevista.load(spacevista_root(tmp_path))}
    sampled = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 19]
    plain = media.visuals(items[2], 32)
    assert [int(np.asarray(f)[0, 0, 0]) for f in plain] == [10 * i for i in sampled]
    point = [np.asarray(f) for f in media.visuals(items[0], 32)]
    assert tuple(point[0][10, 20]) == (255, 0, 0) and tuple(point[0][40, 60]) == (0, 0, 0)  # [y, x], red
    assert all(tuple(f[10, 20]) != (255, 0, 0) for f in point[1:])
    box = [np.asarray(f) for f in media.visuals(items[1], 32)]
    assert tuple(box[3][20, 5]) == (0, 128, 255) and tuple(box[3][20, 20]) == (30, 30, 30)  # outline only
    assert tuple(box[2][20, 5]) == (20, 20, 20) and tuple(box[4][20, 5]) == (50, 50, 50)


def test_spacevista_dual_boxes_are_placed_by_image_path(tmp_path):
    dual = dict(id=50, input_type="image_bbox_text", question="Q?", answer="A",
                videos=[[f"frames/s1/{i:05d}.png" for i in range(FRAMES)]],
                metadata=dict(category="Indoor", scale="m", original_type="T"),
                annotations=dict(dual_bbox=dict(source_image="frames/s1/00005.png", source_bbox=[5, 5, 40, 30],
                                                target_image="elsewhere/00010.png",  # found by its file name
                                                target_bboxes=[[10, 10, 30, 20]])))
    item = spacevista.load(spacevista_root(tmp_path, [dual]))[-1]
    frames = [np.asarray(f) for f in media.visuals(item, 32)]
    assert tuple(frames[4][20, 5]) == (255, 0, 0)  # frame 5 is the 5th sampled: the source box, red
    assert tuple(frames[8][15, 10]) == (0, 128, 255)  # frame 10 is the 9th: the first target box, blue
    assert tuple(frames[0][20, 5]) == (0, 0, 0)


def test_spacevista_mask_entries_are_refused_for_run_not_for_score(tmp_path):
    mask = dict(id=99, input_type="image_mask_text", question="Q?", answer="A", videos=[["frames/s1/00000.png"]],
                metadata=dict(category="Indoor", scale="m", original_type="T"),
                annotations=dict(masks=[dict(mask_path="m.pkl")]))
    root = spacevista_root(tmp_path, [mask])
    with pytest.raises(ValueError, match="entry 8: a image_mask_text entry; its mask overlay"):
        spacevista.load(root)
    assert len(spacevista.load(root, media=False)) == 9


def test_spacevista_official_aggregation(tmp_path, capsys):
    root = spacevista_root(tmp_path)
    preds = write_preds(tmp_path / "sv.jsonl", {r[0]: r[3] for r in SV_ROWS})
    s = json.loads(cli(capsys, "score", "--benchmark", "spacevista", "--data", root, "--predictions", preds).out)
    assert s["categories"] == pytest.approx({"Indoor": 160 / 3, "Outdoor": 100 / 3, "Tabletop": 50.0})
    assert s["overall"] == pytest.approx(45.0)  # 3.6 / 8 over items; the mean of the categories is 45.6
    assert s["answer_types"]["Indoor"] == {"mc": dict(score=100.0, count=1),
                                           "numerical": dict(score=pytest.approx(30.0), count=2)}
    assert s["original_types"]["TYPE_0"]["count"] == 3


# ----------------------------------------------------------------------------- STI-Bench

DIM, SPEED = "Dimensional Measurement", "Speed & Acceleration"
# ID, Video, Task, Answer, prediction, its official score (opensource_test.py: the extracted text's last character)
STI_ROWS = [
    (0, "scene0001.mp4", DIM, "B", "The answer is B", 1.0),  # no pattern: the stripped text, its last letter B
    (1, "scene0001.mp4", DIM, "A", "B, not A", 1.0),  # last character A
    (2, "scene0001.mp4", DIM, "C", "(c) 3 m", 1.0),  # "(A)" pattern, any case
    (3, "camera_front.mp4", SPEED, "D", "Answer: d", 1.0),
    (4, "camera_front.mp4", SPEED, "A", "A is correct, B is not", 1.0),  # "A is correct" before the last letter
    (5, "123456.mp4", SPEED, "B", "none of them", 0.0),  # last character m
    (6, "123456.mp4", SPEED, "E", "", 0.0),  # empty: wrong (an IndexError upstream)
]


def sti_root(tmp_path):
    """qa.parquet + video/<name>/ frame folders (benchmarks/media.py reads a folder of frames as the video)."""
    root = tmp_path / "STI-Bench"
    for name in {r[1] for r in STI_ROWS}:
        (root / "video" / name.removesuffix(".mp4")).mkdir(parents=True)
        for i in range(4):
            (root / "video" / name.removesuffix(".mp4") / f"{i:05d}.png").write_bytes(png(40 * i))
    cands = [json.dumps(dict(A="1 m", B="2 m", C="3 m", D="4 m", E="5 m"))] * len(STI_ROWS)  # a JSON string
    pq.write_table(pa.table(dict(ID=[r[0] for r in STI_ROWS], Video=[r[1] for r in STI_ROWS],
                                 time_start=[0.5] * len(STI_ROWS), time_end=[2.0] * len(STI_ROWS),
                                 Question=[f"How far {r[0]}?" for r in STI_ROWS], Candidates=cands,
                                 Answer=[r[3] for r in STI_ROWS], Task=[r[2] for r in STI_ROWS],
                                 Scene=[None] * len(STI_ROWS))), root / "qa.parquet")
    return root


def test_sti_prompt_and_official_scores(tmp_path, capsys):
    root = sti_root(tmp_path)
    items = {it["id"]: it for it in stibench.load(root)}
    assert items[0]["prompt"] == ("From 0.5 s to 2.0 s. How far 0?\n(A) 1 m\n(B) 2 m\n(C) 3 m\n(D) 4 m\n(E) 5 m\n"
                                  "Please output only the option letter!")
    assert [items[k]["scene"] for k in (0, 3, 5)] == ["indoor", "outdoor", "desktop"]  # scene_type of the file
    assert len(media.visuals(items[0], 4)) == 4
    preds = write_preds(tmp_path / "sti.jsonl", {r[0]: r[4] for r in STI_ROWS})
    s = json.loads(cli(capsys, "score", "--benchmark", "stibench", "--data", root, "--predictions", preds).out)
    assert s["categories"] == pytest.approx({DIM: 100.0, SPEED: 50.0})
    assert s["overall"] == pytest.approx(500 / 7)  # 5 of 7 items, not the mean of the tasks (75)
    assert s["scenes"] == pytest.approx({"indoor": 100.0, "outdoor": 100.0, "desktop": 0.0})


# ----------------------------------------------------------------------------- resume and coverage

@pytest.mark.parametrize("bench", ["mmsi", "stibench", "spacevista"])
def test_resume_and_coverage(tmp_path, capsys, bench):
    rows, root, load = dict(mmsi=(MMSI_ROWS, mmsi_root, mmsi.load), stibench=(STI_ROWS, sti_root, stibench.load),
                            spacevista=(SV_ROWS, spacevista_root, spacevista.load))[bench]
    root = root(tmp_path)
    items = load(root)
    if bench == "stibench":  # (ID, Video, Task, Answer, prediction, score) -> (ID, Task, Answer, prediction, score)
        rows = [(r[0], *r[2:]) for r in rows]
    answers = {it["prompt"]: r[3] for it, r in zip(items, rows)}
    out = tmp_path / f"{bench}.jsonl"
    vlm, proc, calls = fake_model(answers, 1, BENCHMARKS[bench].max_new_tokens)
    with pytest.raises(KeyboardInterrupt):
        E.run_benchmark(bench, items, out, lambda: (vlm, proc), batch_size=2, inputs="train-size")
    done = len(out.read_text().splitlines())
    assert 0 < done < len(rows)
    score = ("score", "--benchmark", bench, "--data", root, "--predictions", out)
    with pytest.raises(SystemExit, match=rf"covers {done} of {len(rows)} {bench} items .*eval.py run --out"):
        cli(capsys, *score)
    vlm, proc, calls = fake_model(answers, None, BENCHMARKS[bench].max_new_tokens)
    E.run_benchmark(bench, items, out, lambda: (vlm, proc), batch_size=2, inputs="train-size")
    assert sum(len(c) for c in calls) == len(rows) - done  # only what was left
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == [r[0] for r in rows]
    assert {x["id"]: x["score"] for x in lines} == pytest.approx({r[0]: r[4] for r in rows})
    s = json.loads(cli(capsys, *score).out)
    assert s["coverage"]["scored"] == s["coverage"]["total"] == len(rows)
    cat = rows[0][1]
    part = json.loads(cli(capsys, *score[:-2], "--categories", cat, "--predictions", out).out)
    assert part["coverage"]["total"] == sum(r[1] == cat for r in rows) and list(part["categories"]) == [cat]
    with pytest.raises(ValueError, match="other settings"):
        E.run_benchmark(bench, items, out, lambda: pytest.fail("refused before loading"), inputs="official")


# ----------------------------------------------------------------------------- the generalisation heatmap

def summaries(tmp_path, capsys):
    """Score files from `eval.py score`: MMSI base 60 / SpaceR 100 / ViLaSR 0; SpaceVista base 45 / SpaceR 0."""
    m, sv = mmsi_root(tmp_path), spacevista_root(tmp_path)
    files = {}
    for name, bench, root, preds in [
            ("mmsi_base", "mmsi", m, {r[0]: r[3] for r in MMSI_ROWS}),
            ("mmsi_spacer", "mmsi", m, {r[0]: r[2] for r in MMSI_ROWS}),
            ("mmsi_vilasr", "mmsi", m, {r[0]: "Z" for r in MMSI_ROWS}),
            ("sv_base", "spacevista", sv, {r[0]: r[3] for r in SV_ROWS}),
            ("sv_spacer", "spacevista", sv, {r[0]: "x" for r in SV_ROWS})]:
        p = write_preds(tmp_path / f"{name}.jsonl", preds)
        cli(capsys, "score", "--benchmark", bench, "--data", root, "--predictions", p)
        files[name] = tmp_path / f"{name}.summary.json"
    return files


def test_heatmap_draws_the_changes(tmp_path, capsys):
    f = summaries(tmp_path, capsys)
    out = tmp_path / "gen.png"
    cap = cli(capsys, "heatmap", "--out", out, "--pair", f"SpaceR={f['mmsi_base']}:{f['mmsi_spacer']}",
              "--pair", f"SpaceR={f['sv_base']}:{tmp_path / 'sv_spacer.jsonl'}",  # a predictions file: its summary
              "--pair", f"ViLaSR={f['mmsi_base']}:{f['mmsi_vilasr']}")
    assert "in points (tuned - base" in cap.out
    assert "| Model | MMSI-Bench | SpaceVista-Bench |" in cap.out
    assert "| SpaceR | +40.0 (60.0 -> 100.0) | -45.0 (45.0 -> 0.0) |" in cap.out
    assert "| ViLaSR | -60.0 (60.0 -> 0.0) | – |" in cap.out
    img = Image.open(out).convert("RGB")
    assert img.size == (H.LABEL_W + 2 * H.CELL_W + 30, H.TOP + 2 * H.CELL_H + 90)
    px = lambda r, c: img.getpixel((H.LABEL_W + c * H.CELL_W + 6, H.TOP + r * H.CELL_H + 6))  # noqa: E731
    gain, loss_a, loss_b, empty = px(0, 0), px(0, 1), px(1, 0), px(1, 1)
    assert gain[2] > gain[0] + 60  # positive: blue
    assert loss_a[0] > loss_a[2] + 60 and loss_b[0] > loss_b[2] + 60  # negative: red
    assert loss_b[2] < loss_a[2]  # -60 is the figure's largest change: the deepest red
    assert empty == H.LIGHT  # no pair: grey
    manifest = tmp_path / "pairs.csv"  # the same from a CSV manifest, paths relative to it
    manifest.write_text("model,base,tuned\nSpaceR,mmsi_base.summary.json,mmsi_spacer.summary.json\n")
    cap = cli(capsys, "heatmap", "--out", tmp_path / "m.png", "--manifest", manifest)
    assert "| SpaceR | +40.0 (60.0 -> 100.0) |" in cap.out


def test_heatmap_refusals(tmp_path, capsys):
    f = summaries(tmp_path, capsys)
    run = ("heatmap", "--out", tmp_path / "x.png", "--pair")
    with pytest.raises(SystemExit, match="base .*mmsi_base.summary.json is mmsi, tuned .* is spacevista"):
        cli(capsys, *run, f"A={f['mmsi_base']}:{f['sv_spacer']}")
    with pytest.raises(SystemExit, match="write MODEL=BASE:TUNED"):
        cli(capsys, *run, f"{f['mmsi_base']}:{f['sv_spacer']}")
    with pytest.raises(SystemExit, match="no nope.summary.json beside it; score it first"):
        cli(capsys, *run, f"A={f['mmsi_base']}:{tmp_path / 'nope.jsonl'}")
    partial = write_preds(tmp_path / "part.jsonl", {0: "B"})
    cli(capsys, "score", "--benchmark", "mmsi", "--data", tmp_path / "MMSI-Bench", "--predictions", partial,
        "--allow-partial")
    with pytest.raises(SystemExit, match="scores 1 of 10 items .*--allow-partial"):
        cli(capsys, *run, f"A={f['mmsi_base']}:{tmp_path / 'part.summary.json'}")
    with pytest.raises(SystemExit, match="A has two mmsi pairs"):
        cli(capsys, *run, f"A={f['mmsi_base']}:{f['mmsi_spacer']}", "--pair", f"A={f['mmsi_base']}:{f['mmsi_vilasr']}")
