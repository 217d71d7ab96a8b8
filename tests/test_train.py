"""train.py end to end on a tiny model and tiny synthetic scenes: every objective, DDP equivalence,
kill-and-resume, atomic checkpoints, stock export."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import data
import model as M
import probe
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    scenes = tmp / "scenes"
    for s in range(2):
        data.synth_scene(scenes / f"scene_{s}", seed=s, num_frames=12, size=112)
    tiny = M.build_tiny(str(tmp / "tiny"), layers=2, hidden=64)
    frames = tmp / "sft" / "clip0"  # an instruction item: a folder of frames + a LLaVA-format JSON
    frames.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((56, 56, 3), 40 * i, np.uint8)).save(frames / f"{i:03d}.png")
    sft = tmp / "sft" / "sft.json"
    sft.write_text(json.dumps([{"id": "0", "video": "clip0", "conversations": [
        {"from": "human", "value": "<video>\nIs the room bright?"}, {"from": "gpt", "value": "no"}]}]))
    return {"tmp": tmp, "scenes": str(scenes), "tiny": tiny, "sft": str(sft)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(env, out, *extra, nproc=1, wait=True):
    args = ["--model", env["tiny"], "--data", env["scenes"], "--out", str(out), "--no-probe", "--size", "112",
            "--frames", "3", "--grids", "8", "--head-dim", "16", "--window", "4", "--log-every", "1", *extra]
    cmd = [sys.executable, "train.py", *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
         "train.py", *args]
    envvars = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=envvars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    res = subprocess.run(cmd, cwd=ROOT, env=envvars, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["model"]


def log(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


@pytest.mark.parametrize("objective", ["sft", "vqa", "corr", "full"])
def test_two_steps_of_each_objective_and_stock_export(env, objective):
    out = env["tmp"] / objective
    run(env, out, "--objective", objective, "--steps", "2", "--sft-data", env["sft"], "--sft-ratio", "0.5")
    recs = log(out)
    assert [r["step"] for r in recs] == [1, 2] and all(np.isfinite(r["loss"]) for r in recs)
    if objective in ("corr", "full"):
        assert all(r["corr"] > 0 for r in recs)
    assert (all(r["depth"] > 0 for r in recs) if objective == "full" else all(r["depth"] == 0 for r in recs))
    stock = transformers.AutoModelForImageTextToText.from_pretrained(env["tiny"])
    exported = transformers.AutoModelForImageTextToText.from_pretrained(str(out / "export"))
    assert type(exported) is type(stock)
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in stock.parameters())


def test_two_process_gloo_equals_one_process_with_same_global_batch(env):
    one, two = env["tmp"] / "one", env["tmp"] / "two"
    run(env, one, "--steps", "2", "--accum", "2")
    run(env, two, "--steps", "2", "--accum", "1", nproc=2)
    for a, b in zip(log(one), log(two)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


def test_sigkill_then_resume_matches_uninterrupted(env):
    ref, cut = env["tmp"] / "ref", env["tmp"] / "cut"
    common = ("--steps", "6", "--save-every", "2", "--lora-rank", "4")
    run(env, ref, *common)
    proc = run(env, cut, *common, wait=False)
    ckpt = cut / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(ckpt, weights_only=False)["step"]
    assert step < 6, "the run finished before it could be killed"
    out = run(env, cut, *common, "--resume")
    assert f"resumed from {ckpt} at step {step}" in out
    w_ref, w_cut = weights(ref), weights(cut)
    for k in w_ref:
        torch.testing.assert_close(w_ref[k], w_cut[k], atol=1e-6, rtol=1e-5)
    _, _, gasp = probe.load_for_probe(str(ckpt))  # the probe reads the LoRA training checkpoint back
    torch.testing.assert_close(gasp.heads.w1.detach(), w_cut["heads.w1"])


def test_interrupted_save_leaves_last_checkpoint_loadable(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    train.atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f):  # writes half a file, then the process is "killed"
        with open(f, "wb") as fh:
            fh.write(b"\x80\x02partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train.atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    back = torch.load(path, weights_only=False)
    assert back["step"] == 1 and torch.equal(back["w"], torch.ones(3))
