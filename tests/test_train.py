"""train.py: flags and their errors (in-process, fast), then end to end on a tiny model and tiny synthetic
scenes (subprocesses, slow): every objective, DDP and DataLoader-worker equivalence, kill-and-resume with the
same weights and log, the --out rules, the checkpoint read back, bf16 and the stock export."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import model as M
import train
from runtime import checkpoint, distributed
from scenes import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("s_per_step", "samples_per_s", "eta_min")  # the only log fields allowed to differ between runs


# ----------------------------------------------------------------------------- flags (fast)

@pytest.mark.parametrize("argv, message", [
    (["--objective", "foo"], "invalid choice: 'foo'"),
    (["--frames", "abc"], "--frames 'abc'"),
    (["--frames", "6-3"], "start is above its end"),
    (["--frames", "1"], "at least 2 frames"),
    (["--save-every", "0"], "--save-every 0: must be > 0"),
    (["--steps", "0"], "--steps 0: must be > 0"),
    (["--accum", "0"], "--accum 0: must be > 0"),
    (["--lora-rank", "-4"], "--lora-rank -4: must be >= 0"),
    (["--lattices", "8,0"], "--lattices '8,0'"),
    (["--dtype", "float8"], "invalid choice: 'float8'"),
    (["--sft-ratio", "1.5"], "must lie in [0, 1]"),
    (["--resume", "--overwrite"], "exclude each other"),
    (["--objective", "sft"], "give --sft-data"),
    (["--objective", "vqa", "--lambda-attn", "0.5"], "needs --objective corr or full"),
    (["--lambda-attn", "0.5", "--grad-ckpt"], "drop --grad-ckpt"),
    (["--train-vision", "--lora-rank", "8"], "full fine-tuning (--lora-rank 0)"),
])
def test_flag_misuse_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path / "f")])
    assert "is a file" in capsys.readouterr().err


def test_help_shows_what_a_bare_run_uses(capsys):
    bare, real = train.parse_args([]), train.parse_args(["--model", "some/model"])
    for key, value in train.DEMO.items():
        assert getattr(bare, key) == value and getattr(real, key) == getattr(train.Config, key)
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1800; 1000 with any other --model)" in text
    assert "both ends included" in text


@pytest.mark.parametrize("key", train.RESUME_KEYS)
def test_resume_names_every_setting_that_differs(key, tmp_path):
    """--resume refuses a checkpoint trained with another value of any key that shapes weights or data."""
    cfg = train.Config(out=str(tmp_path))
    saved = {k: getattr(cfg, k) for k in train.RESUME_KEYS}
    saved[key] = "something else"
    with pytest.raises(SystemExit, match=f"{key}: saved 'something else'"):
        train.check_resume(cfg, {"config": saved})
    train.check_resume(cfg, {"config": {k: getattr(cfg, k) for k in train.RESUME_KEYS}})  # the same: accepted


def test_ranges_include_both_ends():
    assert train.parse_range("8-24") == (8, 24) and train.parse_range("4") == (4, 4)
    assert M.parse_layers("1-2", 4) == [1, 2]
    with pytest.raises(ValueError):
        M.parse_layers("2-100", 4)  # an error, not a clip


def test_warmup_then_cosine():
    f = [train.warmup_cosine(s, warmup=4, total=20) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[-1] > 0
    assert train.warmup_cosine(20, 4, 20) == pytest.approx(0.0)


def test_two_processes_read_the_one_process_stream():
    one = train.item_indices(3, 6, accum=2, world=1, rank=0)
    two = [train.item_indices(3, 6, accum=1, world=2, rank=r) for r in (0, 1)]
    assert sorted(two[0] + two[1]) == one and one == list(range(6, 12))


# ----------------------------------------------------------------------------- end to end (slow)

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    scenes = tmp / "scenes"
    for s in range(2):
        synth.synth_scene(scenes / f"scene_{s}", seed=s, num_frames=12, size=112)
    tiny = M.build_tiny(str(tmp / "tiny"), layers=2, hidden=64)
    frames = tmp / "sft" / "clip0"  # an instruction item: a folder of frames + a LLaVA-format JSON
    frames.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((56, 56, 3), 40 * i, np.uint8)).save(frames / f"{i:03d}.png")
    sft = tmp / "sft" / "sft.json"
    sft.write_text(json.dumps([{"id": "0", "video": "clip0", "conversations": [
        {"from": "human", "value": "<video>\nIs the room bright?"}, {"from": "gpt", "value": "no"}]}]))
    return {"tmp": tmp, "scenes": str(scenes), "tiny": tiny, "sft": str(sft)}


def train_run(env, out, *extra, nproc=1, wait=True, ok=True, model=None):
    args = ["--model", model or env["tiny"], "--data", env["scenes"], "--out", str(out), "--no-probe", "--size", "112",
            "--frames", "3", "--lattices", "8", "--embed-dim", "16", "--window", "4", "--log-every", "1", *extra]
    cmd = [sys.executable, "train.py", *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(distributed.free_port()),
         "train.py", *args]
    envvars = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=envvars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    res = subprocess.run(cmd, cwd=ROOT, env=envvars, capture_output=True, text=True, timeout=300)
    if ok:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return res.stderr


def weights(out):
    return checkpoint.read(str(out))["weights"]


def log(out, timing=False):
    recs = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return recs if timing else [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def assert_same_weights(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol)


@pytest.mark.slow
@pytest.mark.parametrize("objective, lora, lambda_attn", [("sft", 0, 0), ("vqa", 4, 0), ("corr", 0, 0), ("full", 4, 0.5)])
def test_two_steps_of_each_objective_load_back_and_export_stock(env, objective, lora, lambda_attn):
    out = env["tmp"] / objective
    train_run(env, out, "--objective", objective, "--steps", "2", "--sft-data", env["sft"], "--sft-ratio", "0.5",
        "--lora-rank", str(lora), "--lambda-attn", str(lambda_attn))
    recs = log(out)
    assert [r["step"] for r in recs] == [1, 2] and all(np.isfinite(r["loss"]) for r in recs)
    assert all((r.get("attn", 0) > 0) == (lambda_attn > 0) for r in recs)
    if objective in ("corr", "full"):
        assert all(r["corr"] > 0 for r in recs)
    assert (all(r["depth"] > 0 for r in recs) if objective == "full" else all(r["depth"] == 0 for r in recs))
    config = json.load(open(out / "config.json"))
    assert config["objective"] == objective and config["global_batch"] == 1 and config["dtype"] == "float32"
    # the checkpoint reads back into the model training built, whatever the objective
    vlm, proc, gasp, cfg = M.load(str(out / "checkpoint.pt"))
    assert (gasp is not None) == (objective in ("corr", "full")) and cfg["lora_rank"] == lora
    if gasp is not None:
        torch.testing.assert_close(gasp.heads.w1.detach(), weights(out)["heads.w1"])
    stock = transformers.AutoModelForImageTextToText.from_pretrained(env["tiny"])
    exported = transformers.AutoModelForImageTextToText.from_pretrained(str(out / "export"))
    assert type(exported) is type(stock)
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in stock.parameters())


@pytest.mark.slow
def test_two_process_gloo_and_two_workers_equal_one_process(env):
    one, two, workers = env["tmp"] / "one", env["tmp"] / "two", env["tmp"] / "workers"
    train_run(env, one, "--steps", "2", "--accum", "2")
    train_run(env, two, "--steps", "2", "--accum", "1", nproc=2)
    train_run(env, workers, "--steps", "2", "--accum", "2", "--workers", "2")
    for a, b in zip(log(one), log(two)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert log(one) == log(workers)
    assert_same_weights(weights(one), weights(two), atol=1e-5, rtol=1e-4)
    assert_same_weights(weights(one), weights(workers), atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind, lora", [("qwen2_5_vl", "0"), ("qwen2_5_vl", "4"), ("llava_onevision", "0"),
                                        ("llava_onevision", "4")])
def test_two_process_fsdp2_equals_one_process(env, kind, lora):
    """FSDP2 (--engine fsdp2, gloo on CPUs) over 2 processes trains what one process trains: the same per-step
    losses and, after 3 steps, the same weights, for a Qwen and a LLaVA family, full fine-tuning and LoRA."""
    tiny = env["tiny"] if kind == "qwen2_5_vl" else M.build_tiny(str(env["tmp"] / f"tiny_{kind}"), kind, layers=2,
                                                                  hidden=64)
    size = "112" if kind == "qwen2_5_vl" else "224"
    one, two = env["tmp"] / f"fsdp_one_{kind}_{lora}", env["tmp"] / f"fsdp_two_{kind}_{lora}"
    common = ("--steps", "3", "--lora-rank", lora, "--size", size)
    train_run(env, one, *common, "--accum", "2", model=tiny)
    train_run(env, two, *common, "--accum", "1", "--engine", "fsdp2", nproc=2, model=tiny)
    for a, b in zip(log(one), log(two), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["corr"] == pytest.approx(b["corr"], rel=1e-4)
    assert_same_weights(weights(one), weights(two), atol=1e-5, rtol=1e-4)
    stock = transformers.AutoModelForImageTextToText.from_pretrained(tiny)
    exported = transformers.AutoModelForImageTextToText.from_pretrained(str(two / "export"))
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in stock.parameters())


def wait_for_steps(proc, out, steps: int, checkpointed: bool = False):
    """Wait until the run in `out` has logged `steps` steps (and saved a checkpoint, if asked), or has ended."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "log.jsonl").exists() and len(open(out / "log.jsonl").readlines()) >= steps and \
                (not checkpointed or (out / "checkpoint.pt").exists()):
            return
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_kill_then_resume_gives_the_same_weights_and_log(env, engine):
    """kill -9 of the whole job (torchrun and its workers under FSDP2) one step past a checkpoint, then --resume:
    the weights and log.jsonl (one record per step) of an uninterrupted run."""
    ref, cut = env["tmp"] / f"kill_ref_{engine}", env["tmp"] / f"kill_cut_{engine}"
    common = ("--steps", "6", "--save-every", "2", *(("--lora-rank", "4") if engine == "ddp" else
                                                    ("--engine", "fsdp2", "--accum", "1")))
    nproc = 1 if engine == "ddp" else 2
    train_run(env, ref, *common, nproc=nproc)
    proc = train_run(env, cut, *common, nproc=nproc, wait=False)
    wait_for_steps(proc, cut, 3, checkpointed=True)
    subprocess.run(["pkill", "-9", "-f", str(cut)])  # the run, torchrun's workers too, whatever their process groups
    proc.wait()
    time.sleep(1)
    step = checkpoint.read(str(cut))["step"]
    assert step < 6, "the run finished before it could be killed"
    out = train_run(env, cut, *common, "--resume", nproc=nproc)
    assert f"resumed from {cut}/checkpoint.pt at step {step}" in out
    assert_same_weights(weights(ref), weights(cut), atol=1e-6, rtol=1e-5)
    assert [r["step"] for r in log(cut)] == list(range(1, 7))  # one record per step, none twice
    for a, b in zip(log(ref), log(cut)):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["depths", "dense", "sparse"])
def test_two_steps_on_each_real_data_layout(env, layout, tmp_path):
    import analytic  # tests/analytic.py: one planar scene per DL3DV layout
    for s in range(2):
        getattr(analytic, f"{layout}_scene")(tmp_path / "data" / f"scene_{s}", seed=s)
    out = train_run(env, tmp_path / "run", "--steps", "2", "--data", str(tmp_path / "data"))
    recs = log(tmp_path / "run")
    assert [r["step"] for r in recs] == [1, 2] and all(np.isfinite(r["loss"]) and r["corr"] > 0 for r in recs)
    assert "skipped" not in out


@pytest.mark.slow
def test_out_folder_rules_and_resume_checks(env):
    out = env["tmp"] / "rules"
    train_run(env, out, "--steps", "1", "--lora-rank", "4")
    assert "holds a run" in train_run(env, out, "--steps", "1", ok=False)
    for flags, key in ((("--layers", "0-0"), "layers"), (("--embed-dim", "8"), "embed_dim"),
                       (("--head-input", "hidden"), "head_input"), (("--lora-rank", "8"), "lora_rank")):
        extra = () if key == "lora_rank" else ("--lora-rank", "4")
        err = train_run(env, out, "--steps", "2", "--resume", *extra, *flags, ok=False)
        assert f"{key}: saved" in err
    assert "the model has layers 0..1" in train_run(env, env["tmp"] / "bad_layers", "--layers", "1-5", ok=False)
    train_run(env, out, "--steps", "2", "--overwrite")  # starts over: a log of this run only
    assert [r["step"] for r in log(out)] == [1, 2]
    fresh = train_run(env, env["tmp"] / "fresh", "--steps", "1", "--resume")
    assert "no checkpoint at" in fresh and "starting fresh" in fresh
    with open(out / "checkpoint.pt", "r+b") as f:  # truncated checkpoint: a named error
        f.truncate(1000)
    assert "not a readable checkpoint" in train_run(env, out, "--steps", "3", "--resume", ok=False)


@pytest.mark.slow
def test_before_probe_is_kept_in_the_checkpoint_and_reused(env):
    out = env["tmp"] / "probed"
    probe_flags = ("--probe", "--probe-scenes", env["scenes"], "--probe-samples", "1", "--no-export")
    train_run(env, out, "--steps", "1", *probe_flags)
    first = json.load(open(out / "probe.json"))
    train_run(env, out, "--steps", "2", "--resume", *probe_flags)
    second = json.load(open(out / "probe.json"))
    scenes = env["scenes"]
    assert second[scenes]["before"] == first[scenes]["before"]
    kept = checkpoint.read(str(out))["probe_before"][scenes]
    assert json.loads(json.dumps(kept)) == first[scenes]["before"]


@pytest.mark.slow
def test_bf16_base_trains_and_exports_bf16_with_its_processor_files(env, tmp_path):
    base = tmp_path / "base_bf16"
    transformers.AutoModelForImageTextToText.from_pretrained(env["tiny"], dtype=torch.bfloat16).save_pretrained(base)
    for name in os.listdir(env["tiny"]):  # the base's processor, tokenizer and chat-template files
        if name not in os.listdir(base):
            (base / name).write_bytes(open(os.path.join(env["tiny"], name), "rb").read())
    out = tmp_path / "run"
    train_run(env, out, "--steps", "2", "--lora-rank", "4", "--dtype", "bfloat16", model=str(base))
    assert all(np.isfinite(r["loss"]) for r in log(out))
    exported = transformers.AutoModelForImageTextToText.from_pretrained(str(out / "export"))
    assert next(exported.parameters()).dtype == torch.bfloat16
    for name in os.listdir(base):
        if not name.endswith(".safetensors") and name != "config.json":
            assert (out / "export" / name).read_bytes() == (base / name).read_bytes(), name
    trained = weights(out)
    assert all(t.dtype == torch.float32 for t in trained.values())  # trained parameters stay float32


def test_interrupted_save_leaves_last_checkpoint_loadable(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save(path, config={}, step=1, weights={"w": torch.ones(3)})

    def dying_save(obj, f):  # writes half a file, then the process is "killed"
        with open(f, "wb") as fh:
            fh.write(b"\x80\x02partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, config={}, step=2, weights={"w": torch.zeros(3)})
    monkeypatch.undo()
    back = checkpoint.read(path)
    assert back["step"] == 1 and torch.equal(back["weights"]["w"], torch.ones(3))


class Payload:
    """An object whose unpickling runs a command: what a hostile checkpoint.pt would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_an_object_is_refused_and_runs_nothing(tmp_path, capsys):
    """Opening someone else's checkpoint runs none of its code: probe.py, --resume and model.load refuse it by name."""
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": checkpoint.FORMAT, "config": {"model": "x"}, "step": 1, "weights": {},
                "probe_before": Payload(marker)}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="refused: it holds Python objects"):
        checkpoint.read(str(run))
    with pytest.raises(ValueError, match="refused"):
        M.load(str(run / "checkpoint.pt"))
    with pytest.raises(SystemExit, match="refused"):
        train.main(["--model", "x", "--data", str(tmp_path), "--out", str(run), "--resume", "--no-probe"])
    assert not marker.exists()


def test_an_old_checkpoint_format_is_a_named_error(tmp_path):
    torch.save({"format": 1, "config": {}, "step": 1, "weights": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="format 1, this code reads format 2; train again"):
        checkpoint.read(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_resume_continues_exactly(env, sig):
    """Preemption: SIGTERM (or SIGINT) mid-run finishes the optimizer step, saves it, exits non-zero with the resume
    command; --resume then gives the weights and log of an uninterrupted run."""
    ref, cut = env["tmp"] / f"sig_ref_{sig}", env["tmp"] / f"sig_cut_{sig}"
    common = ("--steps", "6", "--save-every", "100", "--lora-rank", "4")
    train_run(env, ref, *common)
    proc = train_run(env, cut, *common, wait=False)
    wait_for_steps(proc, cut, 2)
    proc.send_signal(sig)
    out = proc.communicate()[0].decode()
    assert proc.returncode == 128 + sig, out[-2000:]
    step = checkpoint.read(str(cut))["step"]
    assert 2 <= step < 6 and f"stopped by signal {int(sig)} after step {step}" in out and "--resume" in out
    assert [r["step"] for r in log(cut)] == list(range(1, step + 1))  # every finished step saved and logged
    train_run(env, cut, *common, "--resume")
    assert_same_weights(weights(ref), weights(cut), atol=1e-6, rtol=1e-5)
    assert [r["step"] for r in log(cut)] == list(range(1, 7))
    for a, b in zip(log(ref), log(cut)):
        assert a == pytest.approx(b, rel=1e-5)
