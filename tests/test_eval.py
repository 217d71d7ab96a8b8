"""eval.py against the official scorers' worked examples (from their pinned code), on small fixtures
written in each benchmark's released format. The end-to-end run with a tiny random-init model is slow."""

import io
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import eval as E
from benchmarks import BENCHMARKS, allangles, blink, media, scoring, vsibench
from families import Processor
from runtime import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MCA_Q = ("If I am standing by the refrigerator and facing the washer, is the stove to my left, right, or back? "
         "An object is to my back if I would have to turn at least 135 degrees in order to face it.")
REL = ["A. Back", "B. Right", "C. Left"]
VSI_ROWS = [  # id, dataset, scene, question_type, question, options, ground_truth
    (0, "scannet", "scene0050_01", "object_counting", "How many chair(s) are in this room?", None, "4"),
    (1, "scannet", "scene0050_01", "object_rel_direction_easy", MCA_Q, REL, "B"),
    (2, "scannet", "scene0050_01", "object_rel_direction_medium", MCA_Q, REL, "A"),
    (3, "arkitscenes", "41069025", "object_rel_direction_medium", MCA_Q, REL, "C"),
    (4, "arkitscenes", "41069025", "object_rel_direction_hard", MCA_Q, REL, "A"),
    (5, "arkitscenes", "41069025", "route_planning", "How do I get to the door?",
     ["A. Turn Back, Turn Left", "B. Turn Left, Turn Right"], "A"),
    (6, "scannetpp", "09c1414f1b", "room_size_estimation", "What is the size of this room (in square meters)? "
     "If multiple rooms are shown, estimate the size of the combined space.", None, "29.0"),
    (7, "scannetpp", "09c1414f1b", "obj_appearance_order", "Which order?",
     ["A. microwave, blanket, plant, trash can", "B. plant, microwave, blanket, trash can"], "A"),
]
# id -> prediction and its official score: MRA 0.6; "A." passes fuzzy_matching, "(C)" does not; 30 vs 29 -> 1.0
VSI_PREDS = {0: "3", 1: "B", 2: "A.", 3: "(C)", 4: "A", 5: "B", 6: "30"}


def png(value: int, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def vsi_root(tmp_path, frames=40):
    """test.jsonl + one folder of pre-extracted frames per scene, frame i filled with value i."""
    root = tmp_path / "VSI-Bench"
    root.mkdir()
    keys = ("id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth")
    write_jsonl(root / "test.jsonl", [dict(zip(keys, r), pruned=False) for r in VSI_ROWS])
    for _, dataset, scene, *_ in VSI_ROWS:
        (root / dataset / scene).mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            (root / dataset / scene / f"{i:05d}.png").write_bytes(png(i))
    return root


AA_ROWS = [  # index, category, number of views, options, answer
    (0, "camera_pose_estimation", 2, ("View 2 is left of View 1", "right", "behind"), "A"),
    (1, "camera_pose_estimation", 2, ("View 2 is left of View 1", "right", "behind"), "B"),
    (2, "counting", 2, ("2", "3", "4"), "B"),
    (3, "manipulation", 3, ("up", "down", "left"), "C"),
    (4, "relative_direction", 3, ("up", "down", "left"), "A"),
]
AA_PREDS = {0: "A", 1: "A", 2: "3", 3: "I think C", 4: "A or B"}  # hits: 1, 0, 1, 1, 0


def aa_root(tmp_path):
    root = tmp_path / "All-Angles-Bench"
    rows = []
    for index, category, views, (a, b, c), answer in AA_ROWS:
        paths = [f"0001_fencing/cam{v:02d}/{index:05d}.jpg" for v in range(1, views + 1)]
        for p in paths:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 24, 3), 40 * index, np.uint8)).save(root / p)
        rows.append(dict(index=index, folder="0001_fencing", category=category, pair_idx=index ^ 1,
                         sourced_dataset="EgoHumans", image_path=paths, question=f"How many people in View {index}?",
                         A=a, B=b, C=c, answer=answer))
    (root / "data.json").write_text(json.dumps(rows))
    return root


MV_PROMPT = ("The images are frames from a video. The video is shooting a static scene. The camera is either moving "
             "clockwise (left) or counter-clockwise (right) around the object. The first image is from the beginning "
             "of the video and the second image is from the end. Is the camera moving left or right when shooting the "
             "video? Select from the following options.\n(A) left\n(B) right")
BLINK_ROWS = {  # subtask: [(prompt, choices, answer, images, prediction)]
    "Spatial_Relation": [("Is the car beneath the cat?\nSelect from the following choices.\n(A) yes\n(B) no",
                          ["yes", "no"], "(A)", 1, "A"),
                         ("Is the cat on the car?\nSelect from the following choices.\n(A) yes\n(B) no",
                          ["yes", "no"], "(B)", 1, "The answer is (B).")],  # needs the GPT fallback
    "Multi-view_Reasoning": [(MV_PROMPT, ["left", "right"], "(B)", 2, "(B)"),
                             (MV_PROMPT, ["left", "right"], "(B)", 2, "(A) maybe\n\nSo (B)")],
    "Jigsaw": [("Which piece fits?\nSelect from the following choices.\n(A) the first\n(B) the second",
                ["the first", "the second"], "(B)", 3, "(A)")],
}


def blink_root(tmp_path):
    root = tmp_path / "BLINK"
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for subtask, rows in BLINK_ROWS.items():
        (root / subtask).mkdir(parents=True)
        cols = dict(idx=[f"val_{subtask}_{n}" for n in range(1, len(rows) + 1)],
                    question=[r[0].split("\n")[0] for r in rows], prompt=[r[0] for r in rows],
                    choices=[r[1] for r in rows], answer=[r[2] for r in rows], sub_task=[subtask] * len(rows))
        table = pa.table(cols)
        for k in range(1, 5):
            imgs = [dict(bytes=png(10 * k), path=f"{k}.png") if k <= r[3] else None for r in rows]
            table = table.append_column(f"image_{k}", pa.array(imgs, type=image))
        pq.write_table(table.append_column("explanation", pa.array([""] * len(rows))),
                       root / subtask / "val-00000-of-00001.parquet")
    (root / "test.jsonl").write_text("")  # stray files beside the subtask folders are ignored
    return root


def blink_preds():
    return {f"val_{s}_{n}": r[4] for s, rows in BLINK_ROWS.items() for n, r in enumerate(rows, 1)}


def write_preds(path, preds):
    return write_jsonl(path, [{"id": k, "prediction": v} for k, v in preds.items()])


def cli(capsys, *argv):
    """Run eval.py's CLI; returns the captured (out, err)."""
    E.main([str(a) for a in argv])
    return capsys.readouterr()


# ----------------------------------------------------------------------------- official worked examples

@pytest.mark.parametrize("pred, gt, score", [
    ("3", "4", 0.6), ("3.", "4", 0.6), ("3 chairs", "4", 0.6), ("three", "4", 0.0), (" 3", "4", 0.0),
    ("-3", "4", 0.0), ("nan", "4", 0.0), ("2", "2.3", 0.8), ("2.5", "2.3", 0.9), ("80", "69", 0.7),
    ("50", "29.0", 0.0), ("12", "10", 0.6), ("1.2", "1.0", 0.7), ("1.1", "1.0", 0.9)])
def test_vsi_mean_relative_accuracy(pred, gt, score):
    # 12 vs 10: relative error 0.2 > 1 - 0.8 = 0.19999999999999996, so linspace + `<=` gives 0.6, not 0.7
    item = dict(id=0, category="object_counting", prompt="", answer=gt)
    assert scoring.score_item("vsibench", item, pred)["score"] == score


@pytest.mark.parametrize("pred, hit", [
    ("B", 1), ("B.", 1), ("b", 1), ("B. left", 1), ("B\n", 1),
    ("(B)", 0), ("B,", 0), ("Answer: B", 0), ("The answer is B", 0), (" B", 0)])
def test_vsi_fuzzy_matching(pred, hit):
    item = dict(id=0, category="route_planning", prompt="", answer="B")
    assert scoring.score_item("vsibench", item, pred)["score"] == hit


@pytest.mark.parametrize("pred, letter", [
    ("A", "A"), ("(B)", "B"), ("**B**", "B"), ("The answer is B.", "B"), ("I think C", "C"), ("Option: C)", "C"),
    ("3", "B"), ("A or B", "Z"), ("b", "Z"), ("A person is holding 3 balls", "A"),
    ("Cannot determine the answer", "Z")])
def test_allangles_can_infer(pred, letter):
    item = dict(id=0, category="counting", prompt="", answer="B", options={"A": "2", "B": "3", "C": "4"})
    line = scoring.score_item("allangles", item, pred)
    assert (line["extracted"], line["score"]) == (letter, float(letter == "B"))


@pytest.mark.parametrize("pred, choice", [
    ("A", "(A)"), ("(B)", "(B)"), ("E", "(E)"), ("I choose (A) because", "(A)"), ("(A)\n\nFinal: (B)", "(B)"),
    ("(A) or (B)", None), ("The answer is (B).", None), ("A.", None), ("B\n", None)])
def test_blink_analyze_answer(pred, choice):
    item = dict(id="val_Spatial_Relation_1", category="Spatial_Relation", prompt="", answer="(A)",
                choices=["yes", "no"])
    line = scoring.score_item("blink", item, pred)
    assert (line["extracted"], line["score"]) == (choice, float(choice == "(A)"))


def test_malformed_predictions_score_zero(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": 1, "prediction": null}\n{"id": 2, "prediction": 7}\nnot json\n[1, 2]\n'
                     '{"id": 4}\n{"id": 5, "prediction": "A"}\n{"id": 0, "prediction": "4"')  # torn last line
    score = ("score", "--benchmark", "vsibench", "--data", root, "--predictions", preds)
    with pytest.raises(SystemExit, match=r"line\(s\) 3, 4 are not JSON objects with an id.*--allow-partial"):
        cli(capsys, *score)
    cap = cli(capsys, *score, "--allow-partial")
    s = json.loads(cap.out)
    assert s["n"] == 4 and s["malformed"] == 3  # ids 1, 2, 4 score 0; id 5 is right
    assert s["categories"] == {"route_planning": 100.0, "object_rel_direction": 0.0}
    assert all(f"p.jsonl:{n}: not a JSON object" in cap.err for n in (3, 4))
    assert "p.jsonl:7: truncated last line" in cap.err
    assert s["coverage"]["scored"] == 4 and s["coverage"]["total"] == 8 and s["coverage"]["skipped_lines"] == 3
    assert json.loads((tmp_path / "p.summary.json").read_text()) == s  # stored beside the predictions


# ----------------------------------------------------------------------------- prompts, character for character

def test_vsi_prompts(tmp_path):
    items = {it["id"]: it for it in vsibench.load(vsi_root(tmp_path, frames=1))}
    assert items[0]["prompt"] == ("These are frames of a video.\nHow many chair(s) are in this room?\n"
                                  "Please answer the question using a single word or phrase.")
    assert items[1]["prompt"] == ("These are frames of a video.\n" + MCA_Q + "\nOptions:\nA. Back\nB. Right\nC. Left\n"
                                  "Answer with the option's letter from the given choices directly.")


def test_allangles_prompt_and_images(tmp_path):
    root = aa_root(tmp_path)
    item = allangles.load(root)[2]
    assert item["prompt"] == ("Question: How many people in View 2?\nOptions:\nA. 2\nB. 3\nC. 4\n"
                              "Please select the correct answer from the options above. \n")
    assert item["images"] == [str(root / "0001_fencing/cam01/00002.jpg"), str(root / "0001_fencing/cam02/00002.jpg")]
    assert [im.size for im in media.visuals(allangles.load(root)[3], 32)] == [(24, 16)] * 3


def test_blink_prompts_and_images(tmp_path):
    items = {it["id"]: it for it in blink.load(blink_root(tmp_path))}
    assert items["val_Multi-view_Reasoning_1"]["prompt"] == MV_PROMPT
    assert items["val_Jigsaw_1"]["prompt"] == blink.DISCLAIMER + BLINK_ROWS["Jigsaw"][0][0]
    frames = media.visuals(items["val_Multi-view_Reasoning_2"], 32)
    assert [np.asarray(f)[0, 0, 0] for f in frames] == [10, 20]  # image_1, image_2 in order, nulls dropped


# ----------------------------------------------------------------------------- aggregation, CLI

def test_vsibench_score_aggregation(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    preds = write_preds(tmp_path / "p.jsonl", {str(k): v for k, v in VSI_PREDS.items()})  # str ids match too
    s = json.loads(cli(capsys, "score", "--benchmark", "vsibench", "--data", root, "--predictions", preds,
                       "--allow-partial").out)  # id 7 (obj_appearance_order) has no prediction
    rel = (1 + 0.5 + 1) / 3  # unweighted mean of easy/medium/hard (pooled over items would be 3/4)
    assert s["categories"] == pytest.approx({"object_counting": 60.0, "room_size_estimation": 100.0,
                                             "route_planning": 0.0, "object_rel_direction": 100 * rel})
    assert list(s["categories"])[-1] == "object_rel_direction"
    assert s["overall"] == pytest.approx(100 * (0.6 + 1.0 + 0.0 + rel) / 4)  # each question type equal
    assert s["n"] == 7 and s["counts"]["object_rel_direction"] == 4 and s["malformed"] == 0
    assert s["coverage"] == {"scored": 7, "total": 8, "skipped_lines": 0, "categories": {
        "obj_appearance_order": [0, 1], "object_counting": [1, 1], "object_rel_direction": [4, 4],
        "room_size_estimation": [1, 1], "route_planning": [1, 1]}}
    one = json.loads(cli(capsys, "score", "--benchmark", "vsibench", "--data", root, "--predictions", preds,
                         "--categories", "object_rel_direction", "object_counting").out)  # complete: no flag needed
    assert set(one["categories"]) == {"object_counting", "object_rel_direction"} and one["n"] == 5
    assert one["coverage"]["scored"] == one["coverage"]["total"] == 5


def test_allangles_micro_overall(tmp_path, capsys):
    root = aa_root(tmp_path)
    s = json.loads(cli(capsys, "score", "--benchmark", "allangles", "--data", root,
                       "--predictions", write_preds(tmp_path / "p.jsonl", AA_PREDS)).out)
    assert s["categories"] == {"camera_pose_estimation": 50.0, "counting": 100.0, "manipulation": 100.0,
                               "relative_direction": 0.0}
    assert s["overall"] == pytest.approx(60.0)  # 3 of 5 items; the mean of categories would be 62.5


def test_blink_macro_overall_and_unresolved(tmp_path, capsys):
    root = blink_root(tmp_path)
    s = json.loads(cli(capsys, "score", "--benchmark", "blink", "--data", root,
                       "--predictions", write_preds(tmp_path / "p.jsonl", blink_preds())).out)
    assert s["categories"] == {"Jigsaw": 0.0, "Multi-view_Reasoning": 100.0, "Spatial_Relation": 50.0}
    assert s["overall"] == pytest.approx(50.0)  # mean of subtasks; 3 of 5 items would be 60
    assert s["unresolved"] == {"Jigsaw": 0, "Multi-view_Reasoning": 0, "Spatial_Relation": 1}


def test_table_paper_layout(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    a = write_preds(tmp_path / "base.jsonl", VSI_PREDS)
    b = write_preds(tmp_path / "gasp.jsonl", {k: ["4", "B", "A", "C", "A", "A", "29"][k] for k in VSI_PREDS})
    table = ("table", "--benchmark", "vsibench", "--data", root, "--predictions", a, b)
    with pytest.raises(SystemExit, match="covers 7 of 8 vsibench items .obj_appearance_order 0/1.*--allow-partial"):
        cli(capsys, *table)
    out = cli(capsys, *table, "--allow-partial").out.splitlines()
    assert out[0] == "**VSI-Bench**"
    assert out[2] == "| Method | Obj. Count | Route | Rel. Dir. | Room Size | Overall |"
    assert out[3] == "|---|---|---|---|---|---|"
    assert out[4] == "| base (partial: 7/8 items) | 60.0 | 0.0 | 83.3 | 100.0 | 60.8 |"
    assert out[5] == "| gasp (partial: 7/8 items) | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |"


def test_errors_name_the_problem(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    preds = write_preds(tmp_path / "p.jsonl", VSI_PREDS)
    score = ("score", "--benchmark", "vsibench", "--data", root, "--predictions", preds)
    with pytest.raises(SystemExit, match="'object_count'.*object_counting"):
        cli(capsys, *score, "--categories", "object_count")
    with pytest.raises(SystemExit, match="id '99' is not in the vsibench data"):
        cli(capsys, *score[:-1], write_preds(tmp_path / "q.jsonl", {99: "3"}))
    rows = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    write_jsonl(root / "test.jsonl", rows[:1] + [dict(rows[1], question_type="object_height")])
    with pytest.raises(SystemExit, match="row 1: unknown question_type 'object_height'"):
        cli(capsys, *score)
    write_jsonl(root / "test.jsonl", [{k: v for k, v in rows[0].items() if k != "ground_truth"}])
    with pytest.raises(SystemExit, match="missing field 'ground_truth'"):
        cli(capsys, *score)
    with pytest.raises(SystemExit, match="no test.jsonl"):
        cli(capsys, "score", "--benchmark", "vsibench", "--data", tmp_path, "--predictions", preds)
    with pytest.raises(SystemExit):
        E.main(["score", "--benchmark", "scannet", "--data", str(root), "--predictions", str(preds)])
    assert "eval.py score: error: argument --benchmark: invalid choice: 'scannet'" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["run", "score", "table"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        E.main([cmd, "--help"])
    assert e.value.code == 0 and "--benchmark" in capsys.readouterr().out


def test_limit_is_per_category(tmp_path):
    items = vsibench.load(vsi_root(tmp_path, frames=1))
    picked = scoring.select("vsibench", items, ["object_rel_direction", "room_size_estimation"], limit=1)
    assert [it["id"] for it in picked] == [1, 2, 4, 6]


# ----------------------------------------------------------------------------- frames and optional formats

def test_frame_folder_sampling(tmp_path):
    root = vsi_root(tmp_path, frames=40)
    frames = media.visuals(vsibench.load(root)[0], 32)
    assert [int(f[0, 0, 0]) for f in frames] == np.linspace(0, 39, 32, dtype=int).tolist()
    (tmp_path / "unpadded").mkdir()
    for i in range(12):
        (tmp_path / "unpadded" / f"frame_{i}.png").write_bytes(png(i))
    assert [int(f[0, 0, 0]) for f in media.read_frames(str(tmp_path / "unpadded"), 12)] == list(range(12))


def test_missing_media_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4 nor a frame folder .*missing/"):
        media.check_media([dict(id=0, video=str(tmp_path / "scannet" / "missing"))])
    items = allangles.load(aa_root(tmp_path))
    (tmp_path / "All-Angles-Bench/0001_fencing/cam02/00003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="item 3: image .*cam02/00003.jpg not found"):
        media.check_media(items)


def test_mp4_sampling(tmp_path):
    container = av.open(str(tmp_path / "scene.mp4"), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(40):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    frames = media.read_frames(str(tmp_path / "scene"), 8)
    assert np.abs(np.array([f.mean() for f in frames]) - 6 * np.linspace(0, 39, 8, dtype=int)).max() < 6


def test_vsibench_parquet(tmp_path):
    root = vsi_root(tmp_path, frames=1)
    rows = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), root / "test-00000-of-00001.parquet")
    from_jsonl = vsibench.load(root)
    (root / "test.jsonl").unlink()
    assert vsibench.load(root) == from_jsonl == vsibench.load(root / "test-00000-of-00001.parquet")


# ----------------------------------------------------------------------------- generation

def fake_model(answers, fail_after=None, max_new_tokens=2048):
    """A stand-in (vlm, processor) with the model.load contract, answering `answers[prompt]`; generation must be
    greedy with the benchmark's official length (All-Angles' 2048 by default)."""
    calls, batch = [], []

    class Processor:
        tokenizer = SimpleNamespace(batch_decode=lambda ids, skip_special_tokens: [f" {answers[p]}\n" for p in batch])

        def build(self, frames, prompts, fps_batch=None):
            calls.append([len(f) for f in frames])
            batch[:] = prompts
            return ({"input_ids": torch.zeros(len(prompts), 2, dtype=torch.long)},
                    [dict(mode="images", frames=len(f), grids=[], tokens=0) for f in frames])

        def describe(self):
            return "fake"

    def generate(input_ids, **kw):
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt  # the run is interrupted mid-way
        assert kw["do_sample"] is False and kw["max_new_tokens"] == max_new_tokens
        return torch.cat([input_ids, torch.ones(len(input_ids), 1, dtype=torch.long)], 1)

    vlm = SimpleNamespace(device="cpu", generate=generate, config=SimpleNamespace(model_type="fake"))
    return vlm, Processor(), calls


def test_run_writes_as_it_goes_and_resumes(tmp_path):
    items = allangles.load(aa_root(tmp_path))
    answers = {it["prompt"]: AA_PREDS[it["id"]] for it in items}
    out = tmp_path / "runs" / "aa.jsonl"
    vlm, processor, calls = fake_model(answers, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        E.run_benchmark("allangles", items, out, lambda: (vlm, processor), batch_size=2, inputs="train-size")
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1]
    assert calls == [[2, 2], [2]]  # batches hold items with equal image counts
    with out.open("a") as f:
        f.write('{"id": 2, "predic')  # a torn last line
    vlm, processor, calls = fake_model(answers)
    E.run_benchmark("allangles", items, out, lambda: (vlm, processor), batch_size=2, inputs="train-size")
    assert calls == [[2], [3, 3]]  # only what was left
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # the torn line was dropped
    assert sorted(x["id"] for x in lines) == [0, 1, 2, 3, 4]
    assert set(lines[0]) == {"id", "benchmark", "category", "prompt", "prediction", "extracted", "answer", "score",
                             "item_hash", "inputs"}
    assert lines[0]["inputs"] == {"mode": "images", "frames": 2, "grids": [], "tokens": 0}  # the fake shows nothing
    assert {x["id"]: x["score"] for x in lines} == {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 0.0}
    assert {x["id"]: x["prediction"] for x in lines} == AA_PREDS  # decoded text stripped
    E.run_benchmark("allangles", items, out, lambda: pytest.fail("nothing left to do, yet the model was loaded"),
          inputs="train-size")
    assert scoring.score_file("allangles", items, out)["overall"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="other settings .inputs: 'train-size' now 'official'"):
        E.run_benchmark("allangles", items, out, lambda: pytest.fail("refused before loading"), inputs="official")


@pytest.mark.slow
def test_end_to_end_tiny_model(tmp_path, capsys):
    import model
    ckpt = model.build_tiny(str(tmp_path / "tiny"))
    roots = {"vsibench": vsi_root(tmp_path, frames=6), "allangles": aa_root(tmp_path), "blink": blink_root(tmp_path)}
    for bench, root in roots.items():
        out = tmp_path / f"{bench}.jsonl"
        run = ("run", "--benchmark", bench, "--data", root, "--model", ckpt, "--out", out, "--limit", 1,
               "--batch-size", 2, "--frames", 4, "--max-new-tokens", 3, "--device", "cpu", "--frame-size", 112,
               "--inputs", "train-size")
        cap = cli(capsys, *run)
        s, lines = json.loads(cap.out), [json.loads(line) for line in out.read_text().splitlines()]
        assert s["benchmark"] == bench and s["n"] == len(lines) == sum(s["counts"].values())
        assert 0 <= s["overall"] <= 100
        assert all(isinstance(x["prediction"], str) and 0 <= x["score"] <= 1 for x in lines)
        assert f"| {bench} (partial: " in cap.err  # the one-row table for humans
        # 112 px squares: one video of all frames (Qwen2.5-VL's training layout)
        assert all(x["inputs"]["grids"] == [[x["inputs"]["frames"], 8, 8]] for x in lines)
        table = cli(capsys, "table", "--benchmark", bench, "--data", root, "--predictions", out,
                    "--allow-partial").out.splitlines()
        assert table[2].startswith("| Method | ") and table[2].endswith(" | Overall |")
        assert len(table) == 5 and table[4].startswith(f"| {bench} (partial: ")
    single = tmp_path / "single.jsonl"  # batched left-padded generation = one item at a time
    cli(capsys, "run", "--benchmark", "allangles", "--data", roots["allangles"], "--model", ckpt, "--out", single,
        "--limit", 1, "--batch-size", 1, "--max-new-tokens", 3, "--device", "cpu", "--frame-size", 112,
        "--inputs", "train-size")
    predictions = lambda f: {x["id"]: x["prediction"] for x in map(json.loads, f.read_text().splitlines())}  # noqa
    assert predictions(single) == predictions(tmp_path / "allangles.jsonl")


# ----------------------------------------------------------------------------- official inputs (tiny models)

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (vlm, tokenizer) of a tiny random-init model, built once per module."""
    import model
    out = {}

    def get(kind):
        if kind not in out:
            path = model.build_tiny(str(tmp_path_factory.mktemp(kind)), kind)
            vlm, proc, _, _ = model.load(path)
            out[kind] = (vlm, proc.tokenizer, path)
        return out[kind]
    return get


def rgb(h=480, w=640, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def visual_ids(batch, builder):
    return sum(int((batch["input_ids"] == i).sum()) for i in builder.token_ids.values())


# smart_resize by hand (Qwen2-VL image processor docstring: sides multiples of 28, aspect kept, pixels in bounds):
#   VSI-Bench 640x480, max 602,112: 476x644 fits -> 17x23 tokens per 2-frame group, 16 groups from 32 frames;
#   All-Angles 640x480, min 1280*28^2: scale sqrt(1003520/307200) -> ceil to 868x1176 -> 31x42 tokens;
#   BLINK 640x480 fits -> 17x23 tokens; an 8x8 BLINK image is scaled up to min 256*28^2 -> 448x448 -> 16x16.
@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen2_vl"])
@pytest.mark.parametrize("bench, visual, grids, tokens", [
    pytest.param("vsibench", [rgb()] * 32, [[16, 34, 46]], 16 * 17 * 23, marks=pytest.mark.slow),  # ~5 s
    ("allangles", [Image.fromarray(rgb())] * 2, [[1, 62, 84]] * 2, 2 * 31 * 42),
    ("blink", [Image.fromarray(rgb())], [[1, 34, 46]], 17 * 23),
    ("blink", [Image.fromarray(rgb(8, 8))], [[1, 32, 32]], 16 * 16)])
def test_qwen_official_grids(tiny, kind, bench, visual, grids, tokens):
    vlm, tok, _ = tiny(kind)
    b = Processor(vlm.config, tok, benchmark=bench)
    batch, (record,) = b.build([visual], ["How many chairs?"], [None])
    assert record["grids"] == grids and record["tokens"] == tokens == visual_ids(batch, b)
    assert record["mode"] == ("video" if bench == "vsibench" else "images") and record["frames"] == len(visual)
    key = "video" if bench == "vsibench" else "image"
    assert batch[f"{key}_grid_thw"].tolist() == grids
    assert batch["pixel_values_videos" if key == "video" else "pixel_values"].shape == (sum(
        t * h * w for t, h, w in grids), 3 * 2 * 14 * 14)
    assert int((batch["mm_token_type_ids"] == (2 if key == "video" else 1)).sum()) == tokens
    other = "image" if key == "video" else "video"  # a video is one <|video_pad|> block, not a list of images
    assert int((batch["input_ids"] == tok.convert_tokens_to_ids(f"<|{key}_pad|>")).sum()) == tokens
    assert int((batch["input_ids"] == tok.convert_tokens_to_ids(f"<|{other}_pad|>")).sum()) == 0
    assert ("second_per_grid_ts" in batch) == (kind == "qwen2_5_vl" and key == "video")


def test_qwen_video_patches_follow_the_processor_rule(tiny):
    """Two equal frames as one video group = the stock image processor's patches of one frame (it repeats an
    image over the temporal patch); an odd frame count repeats the last frame (the video processor's rule)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    vlm, tok, _ = tiny("qwen2_5_vl")
    b = Processor(vlm.config, tok, benchmark="vsibench")
    b.min_px, b.max_px = 56 * 56, 10 ** 7  # 84x112 stays as it is
    frame = rgb(84, 112)
    patches, grid = b.qwen_video([frame, frame])
    stock = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=10 ** 7)(images=[Image.fromarray(frame)],
                                                                             return_tensors="pt")
    assert grid == [1, 6, 8] == stock["image_grid_thw"][0].tolist()
    assert torch.allclose(patches, stock["pixel_values"].float(), atol=1e-5)
    three, grid3 = b.qwen_video([rgb(84, 112, 1), rgb(84, 112, 2), frame])
    assert grid3 == [2, 6, 8] and torch.allclose(three[48:], patches, atol=1e-5)  # 2nd group: frame, frame


def test_llava_official_inputs(tiny):
    """LLaVA-NeXT-Video at the 7B's CLIP size (336): a 640x480 image through anyres (best grid 672x672:
    2x2 tiles + the base image, 24x24 patches each): 576 base + 36x48 unpadded + 36 newlines = 2340 tokens;
    a video frame: shortest edge 336, centre crop 336, 12x12 = 144 tokens."""
    import copy
    vlm, tok, _ = tiny("llava_next_video")
    config = copy.deepcopy(vlm.config)
    config.vision_config.image_size = 336
    config.image_grid_pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # the 7B's
    b = Processor(config, tok, benchmark="allangles")
    batch, (record,) = b.build([[Image.fromarray(rgb())] * 2], ["Which view?"])
    assert record == dict(mode="images", frames=2, grids=[[5, 24, 24]] * 2, tokens=2 * 2340)
    assert visual_ids(batch, b) == 2 * 2340 and batch["image_sizes"].tolist() == [[480, 640]] * 2
    assert batch["pixel_values"].shape == (2, 5, 3, 336, 336)
    v = Processor(config, tok, benchmark="vsibench")
    frame = np.full((480, 640, 3), 255, np.uint8)
    frame[:, :100] = 0  # edge at x=100: resized x 70, minus the crop's 56 -> 14 (a squash would put it at 52)
    batch, (record,) = v.build([[frame] * 32], ["How many chairs?"])
    assert record == dict(mode="video", frames=32, grids=[[32, 24, 24]], tokens=32 * 144)
    x = batch["pixel_values_videos"]
    assert x.shape == (1, 32, 3, 336, 336) and x[0, 0, 0, 168, 5] < 0 < x[0, 0, 0, 168, 25]
    assert E.rope_factor(32, v.frame_tokens, 4096) == 2 and E.rope_factor(16, 144, 4096) == 1  # 5608, 3304 tokens


def test_llava_linear_rope(tiny):
    vlm, tok, path = tiny("llava_next_video")
    import model
    vlm, *_ = model.load(path)
    rot = vlm.model.language_model.rotary_emb
    before = rot.inv_freq.clone()
    assert "kept" in E.set_linear_rope(vlm, 1)
    line = E.set_linear_rope(vlm, 2)
    after = vlm.model.language_model.rotary_emb
    assert "'rope_type': 'linear', 'factor': 2.0" in line and after is not rot
    assert torch.allclose(after.inv_freq, before / 2)  # positions divided by 2
    assert "kept" in E.set_linear_rope(vlm, 2)


def test_chat_template_and_fallback(tiny):
    vlm, tok, _ = tiny("qwen2_5_vl")
    import copy
    tok = copy.deepcopy(tok)
    tok.chat_template = None
    b = Processor(vlm.config, tok, benchmark="blink")
    assert "no chat template" in b.describe()
    assert b.text(2, "Q?") == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
                               "Q?<|im_end|>\n<|im_start|>assistant\n")
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{% for c in m.content %}{% if c.type == 'image' %}"
                         "<|vision_start|><|image_pad|><|vision_end|>{% elif c.type == 'video' %}<|vision_start|>"
                         "<|video_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}{% endfor %}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    b = Processor(vlm.config, tok, benchmark="vsibench")
    assert b.template_origin == "chat template"
    assert b.text(3, "Q?") == "<user><|vision_start|><|video_pad|><|vision_end|>Q?<assistant>"  # one video
    tok.chat_template = "{% for m in messages %}{{ m.content[-1].text }}{% endfor %}"  # drops the media
    with pytest.raises(ValueError, match="holds 0 video placeholder.*fix the tokenizer's chat template"):
        Processor(vlm.config, tok, benchmark="vsibench").build([[rgb(56, 56)] * 2], ["Q?"])


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="no harness settings for model type 'idefics3'.*--inputs train-size"):
        Processor(SimpleNamespace(model_type="idefics3"), None, benchmark="blink")


# ----------------------------------------------------------------------------- BLINK second pass, score refusals

@pytest.mark.parametrize("pred, second", [
    ("The answer is (B).", "(B)"), ("A. left", "(A)"), ("B) right", "(B)"), ("(A).", "(A)"), ("right", "(B)"),
    ("left or right", None), ("I cannot tell", None)])
def test_blink_second_pass(pred, second):
    item = dict(id="val_Multi-view_Reasoning_1", category="Multi-view_Reasoning", prompt="", answer="(B)",
                choices=["left", "right"])
    line = scoring.score_item("blink", item, pred)
    assert line["extracted"] is None and line["score"] == 0.0  # the official pass leaves these unresolved
    assert line["second_pass"] == second
    assert "second_pass" not in scoring.score_item("blink", item, "(B)")  # resolved answers skip it


def test_blink_second_pass_reported_apart(tmp_path, capsys):
    root = blink_root(tmp_path)
    s = json.loads(cli(capsys, "score", "--benchmark", "blink", "--data", root,
                       "--predictions", write_preds(tmp_path / "p.jsonl", blink_preds())).out)
    assert s["overall"] == pytest.approx(50.0)  # official, unchanged
    sp = s["second_pass"]
    assert "NOT official" in sp["note"]
    assert sp["resolved"] == {"Jigsaw": 0, "Multi-view_Reasoning": 0, "Spatial_Relation": 1}
    assert sp["still_unresolved"] == {"Jigsaw": 0, "Multi-view_Reasoning": 0, "Spatial_Relation": 0}
    assert sp["categories"]["Spatial_Relation"] == 100.0 and sp["overall"] == pytest.approx(200 / 3)


def test_score_refuses_duplicates_and_torn_files(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    full = {k: "1" for k in range(8)}
    score = ("score", "--benchmark", "vsibench", "--data", root, "--predictions")
    dup = tmp_path / "dup.jsonl"
    write_preds(dup, full)
    with dup.open("a") as f:
        f.write('{"id": 3, "prediction": "C"}\n')
    for extra in ((), ("--allow-partial",)):  # never scored: which line is meant?
        with pytest.raises(SystemExit, match="1 duplicate id.*id '3' on lines 4, 9"):
            cli(capsys, *score, dup, *extra)
    torn = tmp_path / "torn.jsonl"
    torn.write_text(write_preds(tmp_path / "x.jsonl", full).read_text() + '{"id": 8, "predi')
    with pytest.raises(SystemExit, match=r"torn.jsonl:9: truncated last line .*--allow-partial"):
        cli(capsys, *score, torn)
    s = json.loads(cli(capsys, *score, torn, "--allow-partial").out)
    assert s["coverage"]["skipped_lines"] == 1 and s["coverage"]["scored"] == 8
    assert json.loads(cli(capsys, *score, write_preds(tmp_path / "ok.jsonl", full)).out)["coverage"] == dict(
        scored=8, total=8, skipped_lines=0, categories={"obj_appearance_order": [1, 1], "object_counting": [1, 1],
                                                        "object_rel_direction": [4, 4], "room_size_estimation": [1, 1],
                                                        "route_planning": [1, 1]})


def expected_inputs(kind: str, bench: str, n: int):
    """(grids, tokens) of a fixture item with n frames / images, by hand. Fixture media: VSI-Bench frames and
    BLINK images 8x8, All-Angles views 16x24 (h x w). Qwen smart_resize scales them up to the min pixels:
    256*28^2 -> 448x448 = 32x32 patches, 16x16 tokens; All-Angles 1280*28^2: x sqrt(1003520/384) = 51.12,
    ceil to multiples of 28 -> 840x1232 = 60x88 patches, 30x44 tokens. LLaVA tiny (224 px CLIP): a frame is
    16x16 patches, 8x8 tokens; images go through anyres (exact counts in test_llava_official_inputs)."""
    if kind == "llava_next_video":
        return ([[n, 16, 16]], n * 64) if bench == "vsibench" else (None, None)
    if bench == "vsibench":
        return [[(n + 1) // 2, 32, 32]], (n + 1) // 2 * 16 * 16
    return ([[1, 60, 88]] * n, n * 30 * 44) if bench == "allangles" else ([[1, 32, 32]] * n, n * 16 * 16)


E2E_CATEGORIES = {"vsibench": ["object_counting", "route_planning"], "allangles": ["counting"],
                  "blink": ["Spatial_Relation", "Multi-view_Reasoning"]}  # a batch of 2 videos; 1 and 2 images


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen2_vl", "llava_next_video"])
def test_end_to_end_official_inputs(tmp_path, capsys, tiny, kind):
    """`eval.py run` on each benchmark's fixture builds the official inputs for each family and runs to the end."""
    _, _, ckpt = tiny(kind)
    roots = {"vsibench": vsi_root(tmp_path, frames=6), "allangles": aa_root(tmp_path), "blink": blink_root(tmp_path)}
    for bench, root in roots.items():
        out = tmp_path / f"{bench}.jsonl"
        cap = cli(capsys, "run", "--benchmark", bench, "--data", root, "--model", ckpt, "--out", out, "--limit", 1,
                  "--batch-size", 2, "--frames", 4, "--max-new-tokens", 2, "--device", "cpu",
                  "--categories", *E2E_CATEGORIES[bench], *(["--dtype", "bfloat16"] if kind == "qwen2_vl" else []))
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert json.loads(cap.out)["n"] == len(lines) > 0
        settings = json.loads(E.settings_path(out).read_text())
        assert settings["inputs"] == "official" and kind in settings["harness"]
        assert settings["dtype"] == ("bfloat16" if kind == "qwen2_vl" else "float32")  # CPU default: float32
        n_visual = {str(it["id"]): len(it.get("images", [0] * 4)) for it in BENCHMARKS[bench].load(root)}
        for x in lines:
            n = n_visual[str(x["id"])]
            assert x["inputs"]["mode"] == ("video" if bench == "vsibench" else "images") and x["inputs"]["frames"] == n
            grids, tokens = expected_inputs(kind, bench, n)
            if grids is None:  # LLaVA images: anyres, the base image plus at least one tile each
                assert len(x["inputs"]["grids"]) == n and all(t >= 2 for t, _, _ in x["inputs"]["grids"])
            else:
                assert (x["inputs"]["grids"], x["inputs"]["tokens"]) == (grids, tokens)


@pytest.mark.slow
def test_end_to_end_llava_onevision_official_image_inputs(tmp_path, capsys, tiny):
    """LLaVA-OneVision's official image inputs (anyres_max_9 for a lone image, one padded tile each for several, its
    harness's conversation text) run through generate() to the end on All-Angles and BLINK."""
    _, _, ckpt = tiny("llava_onevision")
    for bench, root in {"allangles": aa_root(tmp_path), "blink": blink_root(tmp_path)}.items():
        out = tmp_path / f"{bench}.jsonl"
        cap = cli(capsys, "run", "--benchmark", bench, "--data", root, "--model", ckpt, "--out", out, "--limit", 1,
                  "--batch-size", 2, "--max-new-tokens", 2, "--device", "cpu", "--categories", *E2E_CATEGORIES[bench])
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert json.loads(cap.out)["n"] == len(lines) > 0
        assert "llava_onevision" in json.loads(E.settings_path(out).read_text())["harness"]
        n_visual = {str(it["id"]): len(it["images"]) for it in BENCHMARKS[bench].load(root)}
        assert all(x["inputs"]["mode"] == "images" and x["inputs"]["frames"] == n_visual[str(x["id"])]
                   and x["inputs"]["tokens"] > 0 for x in lines)


@pytest.mark.slow
def test_llava_32_frames_gets_linear_rope(tmp_path, capsys, tiny):
    """32 frames x 64 tokens + 1000 overflow a 2048-position context: factor ceil(3048 / 2048) = 2, set and logged."""
    import shutil
    _, _, path = tiny("llava_next_video")
    ckpt = tmp_path / "short_context"
    shutil.copytree(path, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 2048
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "vsi.jsonl"
    cap = cli(capsys, "run", "--benchmark", "vsibench", "--data", vsi_root(tmp_path, frames=32), "--model", ckpt,
              "--out", out, "--categories", "object_counting", "--max-new-tokens", 1, "--device", "cpu")
    assert "'rope_type': 'linear', 'factor': 2.0" in cap.err
    assert "'factor': 2.0" in json.loads(E.settings_path(out).read_text())["rope"]
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["inputs"] == dict(mode="video", frames=32, grids=[[32, 16, 16]], tokens=32 * 64)  # fits 2 x 2048
    config["text_config"]["max_position_embeddings"] = 256  # images get no RoPE scaling: an overflow is marked
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "blink.jsonl"
    cap = cli(capsys, "run", "--benchmark", "blink", "--data", blink_root(tmp_path), "--model", ckpt, "--out", out,
              "--categories", "Spatial_Relation", "--limit", 1, "--max-new-tokens", 1, "--device", "cpu")
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["inputs"]["over_context"] > 256 and "1 item(s) need more than the model's 256 positions" in cap.err


def test_llava_onevision_video_inputs(tiny):
    """LLaVA-OneVision on VSI-Bench (thinking-in-space): at 384 px, 27x27 patches pooled to 14x14 = 196 tokens
    per frame, plus one newline token: 32 frames -> 6273 <video> tokens; frames squashed, not cropped."""
    import copy
    vlm, tok, _ = tiny("llava_onevision")
    config = copy.deepcopy(vlm.config)
    config.vision_config.image_size = 384
    b = Processor(config, tok, benchmark="vsibench")
    frame = np.full((480, 640, 3), 255, np.uint8)
    frame[:, :100] = 0  # edge at x=100 -> 60 after the squash to 384 (a centre crop would put it at 13)
    batch, (record,) = b.build([[frame] * 32], ["How many chairs?"])
    assert record == dict(mode="video", frames=32, grids=[[32, 27, 27]], tokens=32 * 196 + 1)
    x = batch["pixel_values_videos"]
    assert x.shape == (1, 32, 3, 384, 384) and x[0, 0, 0, 192, 50] < 0 < x[0, 0, 0, 192, 70]
    with pytest.raises(ValueError, match="LLaVA-OneVision inputs for VSI-Bench .video.*STI-Bench.*train-size"):
        Processor(config, tok, benchmark="stibench")


@pytest.mark.slow
def test_end_to_end_llava_onevision_vsibench(tmp_path, capsys, tiny):
    _, _, ckpt = tiny("llava_onevision")
    out = tmp_path / "vsi.jsonl"
    cli(capsys, "run", "--benchmark", "vsibench", "--data", vsi_root(tmp_path, frames=6), "--model", ckpt, "--out",
        out, "--categories", *E2E_CATEGORIES["vsibench"], "--frames", 4, "--max-new-tokens", 2, "--device", "cpu",
        "--batch-size", 2)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["inputs"] for x in lines] == [dict(mode="video", frames=4, grids=[[4, 16, 16]], tokens=4 * 64 + 1)] * 2


# ----------------------------------------------------------------------------- malformed inputs are named

def vsi_rows_with(tmp_path, row: int, **change):
    root = vsi_root(tmp_path, frames=1)
    rows = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    rows[row].update(change)
    write_jsonl(root / "test.jsonl", rows)
    return root


@pytest.mark.parametrize("row, change, message", [
    (0, dict(ground_truth=None), "row 0: field 'ground_truth' is null"),
    (3, dict(question=None), "row 3: field 'question' is null"),
    (0, dict(ground_truth=[4]), r"row 0: object_counting ground_truth \[4\] is not a positive number"),
    (6, dict(ground_truth="0"), "row 6: room_size_estimation ground_truth '0' is not a positive number"),
    (0, dict(ground_truth="three"), "ground_truth 'three' is not a positive number"),
    (1, dict(ground_truth=2), "row 1: ground_truth 2 is not the letter of one of its options"),
    (1, dict(ground_truth="D"), "ground_truth 'D' is not the letter"),
    (1, dict(options="A. Back, B. Right"), "row 1: options 'A. Back, B. Right' are not a list of lettered strings"),
    (1, dict(options=["Back", "Right", "Left"]), "options .'Back', 'Right', 'Left'. are not a list of lettered")])
def test_vsi_bad_rows_are_named(tmp_path, row, change, message):
    with pytest.raises(ValueError, match=message):
        vsibench.load(vsi_rows_with(tmp_path, row, **change))


def test_vsi_scene_name_as_a_number(tmp_path):
    root = vsi_rows_with(tmp_path, 3, scene_name=41069025)  # an ARKitScenes id a converter wrote as a number
    assert vsibench.load(root)[3]["video"] == str(root / "arkitscenes" / "41069025")


def test_vsi_numeric_ground_truth_types(tmp_path):
    items = vsibench.load(vsi_rows_with(tmp_path, 0, ground_truth=4))  # 4 as a number: to_float reads it too
    assert scoring.score_item("vsibench", items[0], "3")["score"] == 0.6
    assert scoring.score_item("vsibench", dict(items[0], answer="4.0"), "3.0")["score"] == 0.6
    assert scoring.score_item("vsibench", dict(items[1], answer="b"), "B")["score"] == 1.0  # exact_match lowers both
    assert vsibench.to_float(None) is None  # utils.py to_float: any failure -> None


def test_data_files_that_are_not_json_are_named(tmp_path):
    root = vsi_root(tmp_path, frames=1)
    with (root / "test.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"test.jsonl:9: not JSON"):
        vsibench.load(root)
    rows = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()[:8]]
    (root / "test.json").write_text(json.dumps(rows))  # a JSON list, not JSONL
    with pytest.raises(ValueError, match=r"test.json row 0: a JSON list, not an object with the fields id"):
        vsibench.load(root / "test.json")
    aa = aa_root(tmp_path)
    (aa / "data.json").write_text('{"data": []}')
    with pytest.raises(ValueError, match=r"data.json: a JSON dict, not the released list"):
        allangles.load(aa)
    (aa / "data.json").write_text('[{"index": 0,')
    with pytest.raises(ValueError, match=r"data.json: not JSON"):
        allangles.load(aa)


def test_allangles_data_json_as_data(tmp_path):
    root = aa_root(tmp_path)
    assert allangles.load(root / "data.json") == allangles.load(root)  # images still relative to the folder


def test_allangles_empty_options_are_no_options(tmp_path):
    root = aa_root(tmp_path)
    rows = json.loads((root / "data.json").read_text())
    rows[2]["C"], rows[4]["C"] = "", float("nan")  # json writes NaN; VLMEvalKit's pd.isna drops both
    (root / "data.json").write_text(json.dumps(rows))
    items = allangles.load(root)
    assert items[2]["options"] == {"A": "2", "B": "3"} and "C." not in items[2]["prompt"]
    assert items[4]["options"] == {"A": "up", "B": "down"}
    assert scoring.score_item("allangles", items[2], "3")["extracted"] == "B"  # "" would match every answer's text


def test_allangles_answer_must_be_an_option(tmp_path):
    root = aa_root(tmp_path)
    rows = json.loads((root / "data.json").read_text())
    rows[2]["answer"] = "b"  # mcq_vanilla_eval compares letters case-sensitively: it could never be hit
    (root / "data.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="entry 2: answer 'b' is not one of its option letters A, B, C"):
        allangles.load(root)


@pytest.mark.parametrize("answer, choices, message", [
    ("A", ["yes", "no"], "answer 'A' is not one of .A., .B.; use the val split"),
    ("hidden", ["yes", "no"], "answer 'hidden' is not one of"),
    ("(C)", ["yes", "no"], "answer '.C.' is not one of"),
    ("(A)", [], "choices .. are not a list of option texts")])
def test_blink_bad_answers_are_named(tmp_path, answer, choices, message):
    root = blink_root(tmp_path)
    f = root / "Spatial_Relation" / "val-00000-of-00001.parquet"
    table = pq.read_table(f)
    for name, value in (("answer", pa.array([answer] * 2)),
                        ("choices", pa.array([choices] * 2, pa.list_(pa.string())))):
        table = table.set_column(table.schema.get_field_index(name), name, value)
    pq.write_table(table, f)
    with pytest.raises(ValueError, match=r"Spatial_Relation/val-00000-of-00001.parquet row val_Spatial_Relation_1: "
                       + message):
        blink.load(root)


def test_blink_image_columns_of_plain_bytes_or_paths(tmp_path):
    root = blink_root(tmp_path)
    f = root / "Spatial_Relation" / "val-00000-of-00001.parquet"
    table = pq.read_table(f)
    for values, kind in (([png(1), png(2)], pa.binary()), (["1.png", "2.png"], pa.string())):
        pq.write_table(table.set_column(table.schema.get_field_index("image_1"), "image_1", pa.array(values, kind)), f)
        if kind == pa.binary():  # the image bytes themselves, without the HF struct around them: usable
            items = {it["id"]: it for it in blink.load(root)}
            assert np.asarray(media.visuals(items["val_Spatial_Relation_2"], 32)[0])[0, 0, 0] == 2
        else:
            with pytest.raises(ValueError, match="row val_Spatial_Relation_1: an image without embedded bytes"):
                blink.load(root)


def test_score_refuses_other_benchmarks_and_non_string_predictions(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    score = ("score", "--benchmark", "vsibench", "--data", root, "--predictions")
    aa = tmp_path / "aa.jsonl"  # written by `run --benchmark allangles`: its ids 0..4 are VSI-Bench ids too
    write_jsonl(aa, [scoring.score_item("allangles", it, "A") for it in allangles.load(aa_root(tmp_path))])
    for extra in ((), ("--allow-partial",)):
        with pytest.raises(SystemExit, match="aa.jsonl: written for allangles, not vsibench"):
            cli(capsys, *score, aa, *extra)
    other_key = write_jsonl(tmp_path / "response.jsonl", [{"id": k, "response": "4"} for k in range(8)])
    with pytest.raises(SystemExit, match=r'response.jsonl: 8 line\(s\) have no string "prediction" \(ids 0, 1, '
                       r'2, 3, 4\).*--allow-partial'):
        cli(capsys, *score, other_key)
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [{"id": k, "prediction": 4} for k in range(8)])
    with pytest.raises(SystemExit, match=r"numbers.jsonl: 8 line\(s\) have no string"):
        cli(capsys, *score, numbers)
    assert json.loads(cli(capsys, *score, numbers, "--allow-partial").out)["malformed"] == 8


def test_run_refuses_to_resume_another_benchmarks_file(tmp_path):
    out = tmp_path / "aa.jsonl"  # All-Angles ids 0..4 would count as VSI-Bench items already answered
    write_jsonl(out, [scoring.score_item("allangles", it, "A") for it in allangles.load(aa_root(tmp_path))])
    with pytest.raises(ValueError, match="aa.jsonl holds allangles predictions; use another --out"):
        E.run_benchmark("vsibench", vsibench.load(vsi_root(tmp_path, frames=1)), out,
                        lambda: pytest.fail("the model must not load"))


def test_predictions_are_read_as_utf8_in_any_locale(tmp_path):
    import os
    import subprocess
    import sys
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": 0, "prediction": "3 chaises, \u00e9t\u00e9 \u4e09"}\n', encoding="utf-8")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")  # locale encoding: ASCII
    code = (f"import benchmarks.scoring as S; from pathlib import Path; "
            f"print(ascii(S.read_predictions(Path({str(preds)!r}))[0]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(E.__file__))
    assert out.stdout.strip() == ascii({"0": "3 chaises, \u00e9t\u00e9 \u4e09"}), out.stderr[-300:]


def test_score_names_empty_files_and_folders(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    score = ("score", "--benchmark", "vsibench", "--data", root, "--predictions")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit, match=r"empty.jsonl: no prediction for any of the 8 chosen vsibench items"):
        cli(capsys, *score, tmp_path / "empty.jsonl", "--allow-partial")
    with pytest.raises(SystemExit, match=r"eval.py score: error: .*Is a directory"):
        cli(capsys, *score, tmp_path)


def test_duplicate_data_ids_are_refused(tmp_path, capsys):
    root = vsi_rows_with(tmp_path, 7, id=6)  # id 6 twice: predictions could not tell the items apart
    preds = write_preds(tmp_path / "p.jsonl", {k: "A" for k in range(7)})
    with pytest.raises(SystemExit, match=r"VSI-Bench: 1 id\(s\) used by more than one item \(6\)"):
        cli(capsys, "score", "--benchmark", "vsibench", "--data", root, "--predictions", preds)


def test_rel_direction_subtype_scores_its_whole_column(tmp_path, capsys):
    """Rel. Dir. = mean of easy, medium and hard: `--categories object_rel_direction_easy` must not fill that
    column with easy alone; it scores the column, and a file with only easy is partial."""
    root = vsi_root(tmp_path, frames=1)
    table = ("table", "--benchmark", "vsibench", "--data", root, "--categories", "object_rel_direction_easy",
             "--predictions")
    full = write_preds(tmp_path / "full.jsonl", {k: "B" for k in range(8)})
    assert cli(capsys, *table, full).out.splitlines()[4] == "| full | 33.3 | 33.3 |"  # easy 1, medium 0, hard 0
    easy = write_preds(tmp_path / "easy.jsonl", {1: "B"})
    with pytest.raises(SystemExit, match=r"covers 1 of 4 vsibench items \(object_rel_direction 1/4\)"):
        cli(capsys, *table, easy)
    row = cli(capsys, *table, easy, "--allow-partial").out.splitlines()[4]
    assert row == "| easy (partial: 1/4 items) | 100.0 | 100.0 |"


def test_docstring_commands_keep_their_line_breaks():
    assert "Qwen/Qwen2.5-VL-7B-Instruct \\\n" in E.__doc__  # `--help` shows the command as written


# ----------------------------------------------------------------------------- broken media are named (issue 26)

def run_fake(items, out, bench="allangles", **kw):
    """run_benchmark with the stand-in model of fake_model (answers every prompt with "A")."""
    vlm, processor, _ = fake_model({it["prompt"]: "A" for it in items})
    E.run_benchmark(bench, items, out, lambda: (vlm, processor), inputs="train-size", **kw)


def test_truncated_jpeg_is_named(tmp_path):
    root = aa_root(tmp_path)
    jpg = root / "0001_fencing/cam02/00003.jpg"
    Image.fromarray(rgb(64, 96)).save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[:len(jpg.read_bytes()) // 2])
    with pytest.raises(media.MediaError, match=r"item 3: .*cam02/00003.jpg: cannot decode \(.*truncated.*\); the "
                       "file is truncated or corrupt: replace it"):
        run_fake(allangles.load(root), tmp_path / "aa.jsonl")


def blink_image(root, rows: list, column="image_1", subtask="Spatial_Relation"):
    """Replace one image column of a BLINK fixture parquet with these bytes (one value per row)."""
    f = root / subtask / "val-00000-of-00001.parquet"
    table = pq.read_table(f)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    values = pa.array([dict(bytes=b, path="x.png") for b in rows], type=image)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, values), f)


def test_garbage_image_bytes_in_a_blink_row_are_named(tmp_path):
    root = blink_root(tmp_path)
    blink_image(root, [png(1), b"\x89PNG not really"])
    with pytest.raises(media.MediaError, match=r"item val_Spatial_Relation_2: .*Spatial_Relation/val-00000-of-00001"
                       r".parquet row val_Spatial_Relation_2 column image_1: not a readable image .*replace it"):
        E.run_benchmark("blink", blink.load(root), tmp_path / "b.jsonl", lambda: pytest.fail("checked before loading"))


def test_extreme_aspect_ratio_is_named(tmp_path):
    root = aa_root(tmp_path)
    Image.fromarray(rgb(2, 800)).save(root / "0001_fencing/cam01/00002.jpg")  # 400 times wider than high
    with pytest.raises(media.MediaError, match=r"item 2: .*cam01/00002.jpg: 800x2 px, an aspect ratio of 400:1 "
                       r"\(Qwen2-VL's processor refuses 200:1 or more\); crop or pad"):
        E.run_benchmark("allangles", allangles.load(root), tmp_path / "aa.jsonl",
                        lambda: pytest.fail("checked before loading"))


def test_frame_folder_of_mixed_sizes_is_named(tmp_path):
    root = vsi_root(tmp_path, frames=4)
    (root / "scannet/scene0050_01/00002.png").write_bytes(png(2, size=(8, 16)))
    items = scoring.select("vsibench", vsibench.load(root), ["object_counting"])
    with pytest.raises(media.MediaError, match=r"item 0: .*scannet/scene0050_01: its frames differ in size "
                       r"\(sampled frame 0 is 8x8, frame 2 is 16x8\); .*extract them again"):
        run_fake(items, tmp_path / "vsi.jsonl", bench="vsibench", n_frames=4)


def test_broken_video_is_named(tmp_path):
    root = vsi_root(tmp_path, frames=1)
    (root / "scannet/scene0050_01.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    items = scoring.select("vsibench", vsibench.load(root), ["object_counting"])
    with pytest.raises(media.MediaError, match=r"item 0: .*scannet/scene0050_01.mp4: cannot decode the video "
                       r"\(.*\); the file is truncated, corrupt or holds no video: replace it"):
        run_fake(items, tmp_path / "vsi.jsonl", bench="vsibench", n_frames=4)


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    root = aa_root(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the fixtures' 16x24 views and 8x8 frames are "bombs" here
    with pytest.raises(media.MediaError, match=r"item 0: .*cam01/00000.jpg: Image size \(384 pixels\) exceeds limit "
                       r".*decompression bomb guard\): downscale it"):
        E.run_benchmark("allangles", allangles.load(root), tmp_path / "aa.jsonl",
                        lambda: pytest.fail("checked before loading"))
    root = vsi_root(tmp_path, frames=2)  # frames of a VSI-Bench folder are read the same way
    with pytest.raises(media.MediaError, match=r"item 0: .*scene0050_01/00000.png: Image size .* decompression bomb"):
        media.visuals(vsibench.load(root)[0], 2)


def png16(value: int, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size, value, np.uint16)).save(buf, format="PNG")  # PIL mode I;16
    return buf.getvalue()


def test_16_bit_images_are_scaled_not_white(tmp_path):
    root = aa_root(tmp_path)
    (root / "0001_fencing/cam01/00000.jpg").write_bytes(png16(100 * 257))  # the reader goes by content, not suffix
    assert np.asarray(media.visuals(allangles.load(root)[0], 32)[0])[0, 0].tolist() == [100, 100, 100]
    root = blink_root(tmp_path)
    blink_image(root, [png16(200 * 257), png16(65535)])
    items = {it["id"]: it for it in blink.load(root)}
    assert np.asarray(media.visuals(items["val_Spatial_Relation_1"], 32)[0])[0, 0].tolist() == [200] * 3
    assert np.asarray(media.visuals(items["val_Spatial_Relation_2"], 32)[0])[0, 0].tolist() == [255] * 3


# ----------------------------------------------------------------------------- a resume checks what it resumes

def test_resume_with_another_frame_size_is_refused(tmp_path):
    items, out = allangles.load(aa_root(tmp_path))[:2], tmp_path / "aa.jsonl"
    run_fake(items[:1], out, settings=dict(frame_size=112))
    with pytest.raises(ValueError, match=r"aa.jsonl was written with other settings \(frame_size: 112 now 224\); "
                       r"use another --out, or delete .*aa.jsonl and aa.settings.json"):
        run_fake(items, out, settings=dict(frame_size=224))
    run_fake(items, out, settings=dict(frame_size=112))  # the same settings resume
    assert len(out.read_text().splitlines()) == 2


def test_resume_with_other_questions_under_the_same_ids_is_refused(tmp_path):
    root = aa_root(tmp_path)
    out = tmp_path / "aa.jsonl"
    run_fake(allangles.load(root), out)
    rows = json.loads((root / "data.json").read_text())
    rows[3]["question"] = "How many chairs are in View 3?"
    (root / "data.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"aa.jsonl: 1 answer\(s\) were made for other questions than --data "
                       r"holds now \(ids 3\); use another --out, or delete"):
        run_fake(allangles.load(root), out)


@pytest.mark.parametrize("settings, message", [
    ("", r"aa.settings.json: unreadable \(Expecting value: line 1 column 1 .*\); it records what aa.jsonl was made "
         r"with: use another --out, or delete"),
    (b"{\"inputs\": \"train-size\xe9\"}", r"aa.settings.json:1: byte 0xe9 is not UTF-8"),
    ("[1]", r"aa.settings.json: a JSON list, not the settings object"),
    (None, r"aa.jsonl holds 5 answer\(s\) but no aa.settings.json records what made them; use another --out")])
def test_unreadable_settings_are_named(tmp_path, settings, message):
    items, out = allangles.load(aa_root(tmp_path)), tmp_path / "aa.jsonl"
    run_fake(items, out)
    path = E.settings_path(out)
    if settings is None:
        path.unlink()
    else:
        path.write_bytes(settings if isinstance(settings, bytes) else settings.encode())
    with pytest.raises(ValueError, match=message) as e:
        run_fake(items, out)
    assert "\n" not in str(e.value)


def test_question_files_that_are_not_utf8_are_named(tmp_path, capsys):
    root = vsi_root(tmp_path, frames=1)
    text = (root / "test.jsonl").read_bytes().replace(b"refrigerator", "r\u00e9frig\u00e9rateur".encode("latin-1"))
    (root / "test.jsonl").write_bytes(text)
    preds = write_preds(tmp_path / "p.jsonl", VSI_PREDS)
    with pytest.raises(SystemExit, match=r"^eval.py score: error: .*test.jsonl:2: byte 0xe9 is not UTF-8 .*re-save "
                       "the file as UTF-8"):
        cli(capsys, "score", "--benchmark", "vsibench", "--data", root, "--predictions", preds)
    aa = aa_root(tmp_path)
    (aa / "data.json").write_bytes((aa / "data.json").read_bytes().replace(b"people", "p\u00e9ople".encode("latin-1")))
    with pytest.raises(ValueError, match=r"data.json:1: byte 0xe9 is not UTF-8"):
        allangles.load(aa)


def retrain(folder, tmp_path):
    """Other weights exported into the same folder, as a second training run with the same --out does."""
    import shutil
    import model
    other = model.build_tiny(str(tmp_path / "retrained"), seed=1)
    for f in (tmp_path / "retrained").glob("*.safetensors"):
        shutil.copy(f, folder)
    return other


def test_weights_fingerprint_follows_the_bytes_not_the_path(tmp_path):
    import shutil
    import model
    folder = model.build_tiny(str(tmp_path / "ckpt"))
    print_ = E.weights_fingerprint(folder)
    shutil.copytree(folder, tmp_path / "moved")
    assert E.weights_fingerprint(str(tmp_path / "moved")) == print_  # same weights elsewhere: the same model
    retrain(folder, tmp_path)
    assert E.weights_fingerprint(folder) != print_
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors or \*.bin weight files"):
        E.weights_fingerprint(str(tmp_path))


@pytest.mark.slow
def test_resume_after_retraining_in_place_is_refused(tmp_path, capsys):
    import model
    ckpt = model.build_tiny(str(tmp_path / "ckpt"))
    root, out = aa_root(tmp_path), tmp_path / "aa.jsonl"
    run = ("run", "--benchmark", "allangles", "--data", root, "--model", ckpt, "--out", out, "--max-new-tokens", 1,
           "--device", "cpu", "--inputs", "train-size", "--frame-size", 56, "--categories")
    cli(capsys, *run, "counting")
    assert len(out.read_text().splitlines()) == 1
    retrain(ckpt, tmp_path)
    with pytest.raises(SystemExit, match=r"aa.jsonl was written with other settings \(weights_fingerprint: '[0-9a-f]+"
                       r"' now '[0-9a-f]+'\); use another --out, or delete"):
        cli(capsys, *run, "counting", "manipulation")
    assert len(out.read_text().splitlines()) == 1


# ----------------------------------------------------------------------------- data-parallel runs (torchrun, gloo)

def launch(nproc: int, *argv, ok: bool = True) -> subprocess.CompletedProcess:
    """`python eval.py ...` (nproc 1) or `torchrun --nproc_per_node nproc eval.py ...` on the CPU (gloo)."""
    head = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                str(nproc), "--master_port", str(distributed.free_port())]
    res = subprocess.run([*head, "eval.py", *map(str, argv)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert (res.returncode == 0) == ok, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_two_processes_write_the_one_process_file_and_resume_it(tmp_path):
    """torchrun --nproc_per_node 2: the predictions file is byte for byte the one process's (same lines, same
    order), a partial file (a torn last line too) is resumed under 2 processes into that same file, and a broken
    item on one rank ends both ranks with its message, writing nothing."""
    import model
    ckpt, root = model.build_tiny(str(tmp_path / "tiny")), aa_root(tmp_path)
    # 5 items, batches [0, 1], [2] (2 views), [3, 4] (3 views): round 1 gives each rank a batch, round 2 rank 0 alone
    run = ("run", "--benchmark", "allangles", "--data", root, "--model", ckpt, "--batch-size", 2,
           "--max-new-tokens", 3, "--frame-size", 112, "--inputs", "train-size")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    launch(1, *run, "--out", one)
    res = launch(2, *run, "--out", two)
    assert two.read_bytes() == one.read_bytes() and len(one.read_text().splitlines()) == 5
    assert json.loads(res.stdout) == json.loads(launch(1, "score", "--benchmark", "allangles", "--data", root,
                                                       "--predictions", one).stdout)  # rank 0 alone prints it
    settings = [json.loads(E.settings_path(f).read_text()) for f in (one, two)]
    assert [s.pop("processes") for s in settings] == [1, 2] and settings[0] == settings[1]

    resumed = tmp_path / "resumed.jsonl"  # killed after the first round: batch [0, 1] in, half a line of [2]
    resumed.write_text("".join(one.read_text().splitlines(keepends=True)[:2]) + '{"id": 2, "predic')
    E.settings_path(resumed).write_text(E.settings_path(one).read_text())
    res = launch(2, *run, "--out", resumed)
    assert resumed.read_bytes() == one.read_bytes()
    assert "dropping a truncated last line" in res.stderr

    (root / "0001_fencing" / "cam01" / "00002.jpg").unlink()  # item 2: rank 1's batch of round 1
    broken = tmp_path / "broken.jsonl"
    res = launch(2, *run, "--out", broken, ok=False)
    assert re.search(r"item 2: image \S*cam01/00002.jpg not found", res.stdout + res.stderr)
    assert not broken.exists() or broken.read_text() == ""


@pytest.mark.parametrize("bench", sorted(BENCHMARKS))
def test_every_family_has_official_inputs_or_a_named_gap(bench):
    """`--inputs official` on any benchmark eval.py knows, for every family: the Feed of a named harness, or one
    ValueError naming the family, the benchmark, what is missing and the fix (never a bare KeyError)."""
    from families import FAMILIES, official_feed
    for kind, fam in FAMILIES.items():
        if bench in fam.official:
            feed = official_feed(kind, bench)
            assert feed.harness and feed.harness != "training inputs (fixed squares)"
            continue
        with pytest.raises(ValueError) as err:
            official_feed(kind, bench)
        message = str(err.value)
        assert fam.name in message and BENCHMARKS[bench].title.split()[0] in message and "--inputs train-size" in message
        assert fam.official_gap.get(bench), f"{kind} on {bench}: no Feed and no reason given in official_gap"


def test_qwen3_vl_official_image_inputs_follow_lmms_eval(tiny):
    """Qwen3-VL on BLINK / MMSI-Bench as lmms-eval's qwen3_vl wrapper feeds it: smart_resize to multiples of 32 px
    within 256*28^2..1605632 pixels (640x480 -> 640x480 = 20x15 tokens; 8x8 -> up to 200704 px: 448x448 = 14x14),
    and the wrapper's system turn before the question."""
    vlm, tok, _ = tiny("qwen3_vl")
    for bench in ("blink", "mmsi"):
        b = Processor(vlm.config, tok, benchmark=bench)
        batch, (record,) = b.build([[Image.fromarray(rgb()), Image.fromarray(rgb(8, 8))]], ["Which?"])
        assert record["grids"] == [[1, 30, 40], [1, 28, 28]] and record["tokens"] == 15 * 20 + 14 * 14
        text = tok.decode(batch["input_ids"][0])
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
        assert "lmms-eval qwen3_vl" in b.describe()
    train = Processor(vlm.config, tok)  # training inputs: no system turn (Qwen3-VL's template has none)
    assert "system" not in tok.decode(train([np.zeros((1, 224, 224, 3), np.uint8)], ["Q?"])["input_ids"][0])


def test_stibench_official_inputs_qwen_video(tiny):
    """STI-Bench's opensource_test.py: Qwen2.5-VL video through qwen-vl-utils, max_pixels 360*420 per frame
    (640x480: scaled by sqrt(307200 / 151200), floored to multiples of 28 -> 336x448 = 12x16 tokens per group of
    2 frames), its default min 128*28^2."""
    vlm, tok, _ = tiny("qwen2_5_vl")
    b = Processor(vlm.config, tok, benchmark="stibench")
    batch, (record,) = b.build([[rgb()] * 4], ["From 0 s to 1 s. Which?"], [2.0])
    assert record["mode"] == "video" and record["grids"] == [[2, 24, 32]] and record["tokens"] == 2 * 12 * 16
    assert b.feed.pixels == (128 * 28 * 28, 360 * 420) and "opensource_test.py" in b.describe()


def test_internvl_official_inputs(tiny):
    """InternVL as its own processor feeds it: images as crop_to_patches tiles plus a thumbnail (a 640x480 image
    at 224-px tiles: 4x3 = 12 tiles + thumbnail, 64 tokens each), VSI-Bench frames one tile each."""
    vlm, tok, _ = tiny("internvl")
    b = Processor(vlm.config, tok, benchmark="blink")
    batch, (record,) = b.build([[Image.fromarray(rgb())]], ["Which?"])
    assert record["grids"] == [[13, 16, 16]] and record["tokens"] == 13 * 64 == int((batch["input_ids"] == vlm.config.image_token_id).sum())
    assert batch["pixel_values"].shape == (13, 3, 224, 224)
    v = Processor(vlm.config, tok, benchmark="vsibench")
    batch, (record,) = v.build([[rgb()] * 4], ["How many?"])
    assert record == dict(mode="video", frames=4, grids=[[4, 16, 16]], tokens=4 * 64)
    assert tok.decode(batch["input_ids"][0]).count("Frame") == 4
    with torch.no_grad():
        assert vlm.generate(**batch, max_new_tokens=2, do_sample=False).shape[1] == batch["input_ids"].shape[1] + 2
