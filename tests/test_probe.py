"""probe.py: metrics (G8-G10, AUROC) on constructed q/k, the chance level, names and flags, the figure (drawn by
figures/), and every checkpoint kind train.py writes loaded and probed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from figures import charts, correspondence
import model as M
from runtime import checkpoint, distributed
import probe
from scenes import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PX, H, W = 10, 8, 8  # token size in px, token grid


def _shift_sample(F=3, shift=1):
    """Every frame sees the scene shifted by `shift` tokens in x; tracks at token centres of the anchor."""
    ys, xs = np.mgrid[0:H, 0 : W - shift * (F - 1)]
    base = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)  # (N, 2) token coords in frame 0
    tracks = np.stack([(base + [f * shift, 0] + 0.5) * PX for f in range(F)])  # (F, N, 2) px
    return {"tracks": tracks, "visible": np.ones(tracks.shape[:2], bool), "frame_index": np.arange(F) * 2}


def _identity_qk(F=3, shift=1, dim=128):
    """q/k of a token = one-hot of the surface point it shows (its x minus the frame's shift)."""
    q = torch.zeros(F, H * W, 1, dim)
    for f in range(F):
        for y in range(H):
            for x in range(W):
                q[f, y * W + x, 0, (y * W + (x - f * shift)) % dim] = 1.0
    return q, q.clone()


def test_exact_identity_qk_scores_pck_100():
    sample = _shift_sample()
    q, k = _identity_qk()
    rec = probe.match(q, k, sample, PX, (H, W), scale=50.0)
    assert len(rec["hit2"]) == 3 * sample["tracks"].shape[1]  # pairs (1,0), (2,0), (2,1)
    assert rec["hit1"].all() and rec["hit2"].all()
    assert set(np.unique(rec["gap"])) == {2, 4}  # original frame indices


def test_rho_per_sequence_is_the_mean_and_std_of_each_samples_rho_beside_the_pooled_one():
    """Two samples whose confidences live on different scales: each alone is perfectly calibrated (rho 1), pooled
    they are not; the per-sequence band reports 1 +- 0, the pooled rho is below it."""
    rec = lambda conf, hit: dict(hit1=np.array(hit, bool), hit2=np.array(hit, bool), conf=np.array(conf),  # noqa: E731
                                 gap=np.ones(len(hit), int))
    a, b = rec([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0]), rec([0.05, 0.05, 0.01, 0.01], [1, 1, 0, 0])
    res = probe.layer_metrics([[a, b]])
    assert res["rho_seq_mean"][0] == pytest.approx(1.0) and res["rho_seq_std"][0] == pytest.approx(0.0, abs=1e-12)
    pooled = probe.pearson(np.r_[a["conf"], b["conf"]], np.r_[a["hit2"], b["hit2"]].astype(float))
    assert res["rho"][0] == pytest.approx(pooled) and pooled < 0.9
    c = rec([0.1, 0.1, 0.9, 0.9], [1, 1, 0, 0])  # confidently wrong: rho -1
    res = probe.layer_metrics([[a, c]])
    assert res["rho_seq_mean"][0] == pytest.approx(0.0, abs=1e-12) and res["rho_seq_std"][0] == pytest.approx(1.0)
    every_hit = rec([0.3, 0.2, 0.1, 0.4], [1, 1, 1, 1])  # no rho: left out of the band, not counted as 0
    res = probe.layer_metrics([[a, every_hit]])
    assert res["rho_seq_n"][0] == 1 and res["rho_seq_mean"][0] == pytest.approx(1.0)


def test_confident_correct_and_unsure_wrong_gives_positive_rho():
    sample = _shift_sample()
    q, k = _identity_qk()
    g = torch.Generator().manual_seed(0)
    noisy = torch.arange(H * W) % 2 == 0  # half the tokens: random codes (wrong, low confidence)
    q[:, noisy] = torch.randn(3, int(noisy.sum()), 1, 128, generator=g) * 0.1
    res = probe.layer_metrics([[probe.match(q, k, sample, PX, (H, W), scale=20.0)]])
    assert 0.2 < res["pck2"][0] < 0.95
    assert res["rho"][0] > 0.3


def test_random_qk_scores_near_chance():
    sample = _shift_sample(F=4, shift=0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, H * W, 4, 16, generator=g), torch.randn(4, H * W, 4, 16, generator=g)
    rec = probe.match(q, k, sample, PX, (H, W), scale=0.25)
    ys, xs = np.mgrid[0:H, 0:W]
    chance = np.mean([((xs - x) ** 2 + (ys - y) ** 2 <= 4).sum() / (H * W) for y in range(H) for x in range(W)])
    assert probe.chance_pck((H, W), 2) == pytest.approx(chance)  # the chance line of panel (a)
    assert abs(rec["hit2"].mean() - chance) < 0.08


def test_chance_pck_worked_by_hand():
    # 3x3 grid, δ = 2: the centre reaches all 9 tokens, a corner 6 (not the 3 at distance √5 or √8), an edge
    # middle 7; (9 + 4·6 + 4·7) / 81. δ = 1: centre 5, corner 3, edge 4 -> (5 + 12 + 16) / 81.
    assert probe.chance_pck((3, 3), 2) == pytest.approx(61 / 81)
    assert probe.chance_pck((3, 3), 1) == pytest.approx(33 / 81)
    assert probe.chance_pck((1, 1), 2) == 1.0
    assert probe.chance_pck((400, 400), 2) == pytest.approx(13 / 400**2, rel=0.02)  # the full disc, borders negligible


def test_static_reference_worked_by_hand():
    # 8 px tokens on a 6x6 grid; track 0 moves 1 token right a frame, track 1 jumps 3 tokens down at frame 2,
    # track 2 is hidden in frame 1. Pairs (later, earlier): (1,0) gap 1, (2,0) gap 3, (2,1) gap 2.
    tracks = np.array([[[4, 4], [12, 20], [44, 4]],
                       [[12, 4], [12, 20], [0, 0]],
                       [[20, 4], [12, 28 + 16], [44, 12]]], np.float32)  # (F, N, 2) pixels
    visible = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], bool)
    sample = {"tracks": tracks, "visible": visible, "frame_index": np.array([0, 1, 3])}
    out = probe.static_pck([sample], 8, (6, 6))
    # gap 1: tracks 0 (1 token), 1 (0) -> 2/2; gap 2: tracks 0 (1), 1 (3 tokens, beyond 2) -> 1/2 (track 2 hidden
    # in frame 1); gap 3: track 0 (2 tokens), 1 (3), 2 (1) -> 2/3; pooled 5/7
    assert out["by_gap"] == pytest.approx({1: 1.0, 2: 0.5, 3: 2 / 3})
    assert out["pck2"] == pytest.approx(5 / 7)


def test_static_reference_is_match_with_every_query_attending_to_its_own_token():
    sample = _shift_sample(shift=2)  # pairs 2 tokens apart (hits) and 4 tokens apart (misses)
    F = sample["tracks"].shape[0]
    own = torch.eye(H * W)[None, :, None].repeat(F, 1, 1, 1)  # (F, T, 1, T): token t's q and k point along axis t
    rec = probe.match(own, own, sample, PX, (H, W), scale=50.0)  # a query attends to its own position
    out = probe.static_pck([sample], PX, (H, W))
    assert 0 < out["pck2"] < 1 and out["pck2"] == pytest.approx(rec["hit2"].mean())
    assert out["by_gap"] == pytest.approx({int(g): rec["hit2"][rec["gap"] == g].mean() for g in np.unique(rec["gap"])})


def test_rho_is_numpy_corrcoef():
    rng = np.random.default_rng(0)
    conf, hit = rng.random(200), (rng.random(200) > 0.5).astype(float)
    assert np.isclose(probe.pearson(conf, hit), np.corrcoef(conf, hit)[0, 1])
    assert probe.pearson(conf, np.ones(200)) == 0.0  # constant side: defined as 0, not NaN


def test_temporal_robustness_on_constructed_hits():
    gap = np.array([1, 1, 1, 1, 2, 2, 5, 5, 5, 5])
    hit = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 1], float)  # PCK: 0.75, 0.5, 0.5
    Y = probe.temporal(hit, gap)
    assert Y == pytest.approx({1: 1.0, 2: 0.5 / 0.75, 5: 0.5 / 0.75})


def _rank_auroc(conf, hit):
    """AUROC by the rank formula: U = (sum of the hits' average ranks) - n_hit (n_hit + 1) / 2, over n_hit n_miss."""
    conf, hit = np.asarray(conf, float), np.asarray(hit, bool)
    values, inv, counts = np.unique(conf, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1  # the 1-based rank of each distinct value's first occurrence
    ranks = (first + (counts - 1) / 2)[inv]  # tied values share their average rank
    n_hit, n_miss = hit.sum(), (~hit).sum()
    return (ranks[hit].sum() - n_hit * (n_hit + 1) / 2) / (n_hit * n_miss)


def test_auroc_worked_by_hand():
    # hits 0.9, 0.6, 0.4; misses 0.4, 0.2: of the 6 (hit, miss) pairs the hit is more confident in 5, tied in 1
    # (0.4 vs 0.4, counted half) -> 5.5 / 6. Ranks: 0.2 -> 1, 0.4 and 0.4 -> 2.5 each, 0.6 -> 4, 0.9 -> 5; the hits'
    # sum 11.5, U = 11.5 - 3·4/2 = 5.5.
    conf, hit = [0.9, 0.4, 0.6, 0.2, 0.4], [1, 0, 1, 0, 1]
    assert probe.auroc(conf, hit) == pytest.approx(11 / 12)
    assert _rank_auroc(conf, hit) == pytest.approx(11 / 12)
    assert probe.auroc([0.1, 0.2, 0.3], [0, 1, 1]) == 1.0 and probe.auroc([0.1, 0.2, 0.3], [1, 0, 0]) == 0.0
    assert probe.auroc([0.5] * 4, [1, 0, 1, 0]) == 0.5  # all tied: every pair counts half
    assert probe.auroc([0.1, 0.2], [1, 1]) is None and probe.auroc([0.1, 0.2], [0, 0]) is None  # undefined


def test_auroc_is_the_rank_formula_with_ties_and_half_for_independent_confidence():
    rng = np.random.default_rng(0)
    conf = rng.integers(0, 20, 3000) / 20  # many ties
    hit = rng.random(3000) < 0.3 + 0.5 * conf  # informative
    assert probe.auroc(conf, hit) == pytest.approx(_rank_auroc(conf, hit), abs=1e-12) and probe.auroc(conf, hit) > 0.6
    independent = rng.random(3000) < 0.7
    assert probe.auroc(conf, independent) == pytest.approx(_rank_auroc(conf, independent), abs=1e-12)
    assert abs(probe.auroc(conf, independent) - 0.5) < 0.03


def test_auroc_does_not_depend_on_the_hit_rate_where_rho_does():
    """Hits all more confident than misses: AUROC 1 at 50 % and at 90 % hits; ρ of the 0/1 hit falls with the rate."""
    rng = np.random.default_rng(0)
    got = {}
    for rate in (0.5, 0.9):
        hit = rng.random(4000) < rate
        conf = np.where(hit, rng.uniform(0.1, 1.0, 4000), rng.uniform(0.0, 0.1, 4000))
        got[rate] = probe.auroc(conf, hit), probe.pearson(conf, hit.astype(float))
    assert got[0.5][0] == got[0.9][0] == 1.0
    assert got[0.9][1] < got[0.5][1] - 0.1


def test_auroc_per_layer_pooled_and_per_sample():
    rec = lambda conf, hit: dict(hit1=np.array(hit, bool), hit2=np.array(hit, bool), conf=np.array(conf),  # noqa: E731
                                 gap=np.ones(len(hit), int))
    a = rec([0.9, 0.4, 0.6, 0.2, 0.4], [1, 0, 1, 0, 1])  # 11/12, worked above
    b = rec([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0])  # equal confidences: 0.5, defined and counted
    every_hit, every_miss = rec([0.3, 0.2], [1, 1]), rec([0.3, 0.2], [0, 0])  # no AUROC: left out
    res = probe.layer_metrics([[a, b, every_hit, every_miss]])
    assert res["auroc_seq_n"] == [2]
    assert res["auroc_seq_mean"][0] == pytest.approx((11 / 12 + 0.5) / 2)
    assert res["auroc_seq_std"][0] == pytest.approx((11 / 12 - 0.5) / 2)
    pooled = [np.concatenate([r[key] for r in (a, b, every_hit, every_miss)]) for key in ("conf", "hit2")]
    assert res["auroc"][0] == pytest.approx(_rank_auroc(*pooled))
    res = probe.layer_metrics([[every_hit], [a]])  # a layer without misses: None, not a number
    assert res["auroc"] == [None, pytest.approx(11 / 12)] and res["auroc_seq_n"] == [0, 1]
    assert res["auroc_seq_mean"][0] is None and res["auroc_seq_std"][0] is None


def test_default_names_are_unique():
    paths = ["runs/vqa/checkpoint.pt", "runs/gasp", "runs/gasp/export", "a/run/checkpoint.pt", "b/run/checkpoint.pt",
             "runs/vqa/checkpoint.pt", "Qwen/Qwen2.5-VL-7B-Instruct"]
    names = probe.default_names(paths)
    assert names == ["vqa", "gasp", "gasp/export", "a/run", "b/run", "vqa #2", "Qwen2.5-VL-7B-Instruct"]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("argv, message", [
    (["--model", "a", "--model", "b", "--name", "x"], "2 --model but 1 --name"),
    (["--name", "x"], "without --model"),
    (["--model", "a", "--model", "b", "--name", "x", "--name", "x"], "names must differ"),
    (["--frames", "1"], "at least 2 frames"),
    (["--dtype", "int8"], "invalid choice"),
    (["--sharpen", "0"], "must be a finite number > 0"),
    (["--sharpen", "nan"], "must be a finite number > 0"),
    (["--model", "nowhere/checkpoint.pt"], "--model nowhere/checkpoint.pt: nowhere/checkpoint.pt: no training"),
])
def test_cli_misuse_is_a_usage_error(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.setattr(sys, "argv", ["probe.py", *argv, "--scenes", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        probe.main()
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_model_load_refuses_what_it_cannot_honour(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        M.load(str(tmp_path / "missing.pt"))
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # a truncated checkpoint: a named error
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        M.load(str(tmp_path), attn_implementation="eager")


def _results(pck2, rho=0.5, temporal=None, heads=None, grid=(8, 8), auroc=None):
    """A probe result as run_probe returns it, from given numbers (auroc: one per layer, None where undefined)."""
    n = len(pck2)
    auroc = auroc or [0.75] * n
    native = dict(pck1=pck2, pck2=pck2, rho=[rho] * n, rho_seq_mean=[rho] * n, rho_seq_std=[0.1] * n,
                  rho_seq_n=[1] * n, auroc=auroc, auroc_seq_mean=auroc, auroc_seq_std=[None if a is None else 0.1
                                                                                      for a in auroc],
                  auroc_seq_n=[int(a is not None) for a in auroc], temporal=[temporal or {1: 1.0, 2: 0.8}] * n,
                  n=[10] * n, peak_layer=int(np.argmax(pck2)), peak_pck2=max(pck2), avg_pck2=float(np.mean(pck2)))
    out = {"native": native, "grid": list(grid), "chance_pck2": probe.chance_pck(grid, 2)}
    if heads is not None:
        out.update(heads={**native, "pck2": heads, "peak_layer": int(np.argmax(heads)), "peak_pck2": max(heads),
                          "avg_pck2": float(np.mean(heads))}, head_layers=list(range(n)), tau=0.07)
    return out


def _has(img: Image.Image, color, min_px: int = 20) -> bool:
    return int((np.asarray(img.convert("RGB")) == color).all(-1).sum()) >= min_px


def test_chart_marks_clipped_values_and_keeps_the_legend_outside():
    def draw(v):
        return charts.chart([dict(label="m", xs=[1, 2], ys=[0.5, v], color=(255, 0, 0), style="solid")],
                            "t", "x", "y", ylim=(0.0, 1.5))
    inside, clipped = np.asarray(draw(1.4)), np.asarray(draw(3.0))
    top = slice(30, 42)  # the band just under the plot's top edge (y0 = 30), where the clip mark sits
    assert (clipped[top] != inside[top]).any(-1).sum() > 30  # triangle and value text
    legend_x = 1000 - charts.LEGEND_W - 20 + 16
    assert (inside[:, legend_x:legend_x + 22] == (255, 0, 0)).all(-1).sum() > 10  # swatch right of the plot area


def test_table_is_aligned_and_names_every_model():
    res = {"stock": _results([0.1, 0.3]), "a rather long run name": _results([0.2, 0.4], heads=[0.5, 0.9])}
    text = probe.pck_table(res)
    lines = text.splitlines()
    assert "stock" in lines[1] and "a rather long run name" in lines[1]
    widths = {len(line) for line in lines[1:] if line.strip() and not line.startswith("chance")}
    assert len(widths) == 1, text  # every data row as wide as the header
    assert "0.900@1" in text and "0.300@1" in text and f"{probe.chance_pck((8, 8), 2):.3f}" in text


def test_table_reports_rho_and_auroc_at_the_peak_layer():
    res = {"stock": _results([0.1, 0.3], rho=-0.2, auroc=[0.9, 0.45]),
           "gasp": _results([0.6, 0.4], rho=0.3, auroc=[None, 0.8], heads=[0.5, 0.9])}
    lines = probe.pck_table(res).splitlines()
    rho, auroc = next(s for s in lines if s.split()[0] == "rho"), next(s for s in lines if s.split()[0] == "auroc")
    assert rho.split()[1:] == ["-0.20", "-", "+0.30", "+0.30"]  # stock's peak layer 1, gasp's 0 (its head's 1)
    assert auroc.split()[1:] == ["0.450", "-", "-", "0.800"]  # gasp's peak layer has no AUROC: '-'
    assert len(rho) == len(auroc) == len(lines[1])


def test_figure_draws_from_results_with_an_undefined_auroc():
    res = {"stock": _results([0.1, 0.3], auroc=[None, 0.45]), "gasp": _results([0.6, 0.4], heads=[0.5, 0.9])}
    img = probe.figure(res, [])
    assert img.width == charts.FIG_W and img.height > 4 * 300  # header and panels (a), (b), (b'), (c)
    for m in range(2):
        assert _has(img, charts.model_color(m), 200)


def test_correspondence_row_is_drawn_from_arrays():
    """Panel (d) without a model: the query ringed red on the later frame, the attention in red over the dimmed
    earlier frame with the truth ringed lime, and zero flow drawn white."""
    later, earlier = np.full((80, 80, 3), 128, np.uint8), np.full((80, 80, 3), 128, np.uint8)
    attention = np.zeros((8, 8))
    attention[2, 5] = 1.0  # the earlier frame's token (x 5, y 2)
    img = correspondence.row(later, earlier, (30, 40), (55, 25), attention, np.zeros((8, 8, 2)), (7, 0), 3, "m",
                             (10, 20, 30))
    px = np.asarray(img)
    assert img.width == charts.FIG_W and _has(img, (10, 20, 30))  # the model's swatch
    assert _has(img, (255, 0, 0)) and _has(img, (0, 255, 0)) and _has(img, (255, 40, 0), 100)
    side = (charts.FIG_W - 170 - 4 * 12) // 3
    flow = px[44:44 + side, 12 + 2 * (side + 12):12 + 3 * side + 2 * 12]
    assert (flow == 255).all()  # no motion anywhere: white
    np.testing.assert_array_equal(correspondence.flow_rgb(np.zeros((1, 3)), np.zeros((1, 3)), 8.0), 255)
    right, down = correspondence.flow_rgb(np.array([[8.0, 0.0]]), np.array([[0.0, 8.0]]), 8.0)[0]
    assert not (right == down).all() and right.min() < 128  # full length: saturated, hue by direction


@pytest.fixture(scope="module")
def tiny_probe(tmp_path_factory):
    """A tiny random model probed on one synthetic scene at 112 px."""
    tmp = tmp_path_factory.mktemp("probe")
    synth.synth_scene(tmp / "scenes" / "s0", seed=0, num_frames=6, size=112)
    vlm, proc, _, _ = M.load(M.build_tiny(str(tmp / "tiny"), layers=2, hidden=64), size=(112, 112))
    samples = probe.probe_samples(str(tmp / "scenes"), proc.size, 3, 1)
    return vlm, proc, samples, probe.run_probe(vlm, proc, samples)


def test_sharpen_scales_the_logits_of_the_same_q_and_k(tiny_probe):
    """--sharpen c: the probe's softmax of c·q·k/√d, i.e. exactly the default probe of layer l in a model whose
    layer-l queries are c times larger (a copy with that layer's q_proj scaled; the layers below it are
    unchanged, so its q and k are too); c = 1 is G8 itself."""
    import copy
    vlm, proc, samples, base = tiny_probe
    assert probe.run_probe(vlm, proc, samples, sharpen=1.0)["native"] == base["native"]
    sharp = probe.run_probe(vlm, proc, samples, sharpen=4.0)["native"]
    for l in range(len(M.llm_layers(vlm))):
        scaled = copy.deepcopy(vlm)
        attn = M.llm_layers(scaled)[l].self_attn
        attn.q_proj.weight.data *= 4.0
        attn.q_proj.bias.data *= 4.0
        ref = probe.run_probe(scaled, proc, samples)["native"]
        assert sharp["n"][l] == ref["n"][l]
        assert sharp["pck2"][l] == pytest.approx(ref["pck2"][l], abs=1e-6)
        assert sharp["rho"][l] == pytest.approx(ref["rho"][l], abs=1e-5)
    assert not np.allclose(sharp["rho"], base["native"]["rho"])


@pytest.mark.slow
@pytest.mark.parametrize("n_models", [1, 3])
def test_figure_renders_one_colour_per_model(tiny_probe, tmp_path, n_models):
    vlm, proc, samples, res = tiny_probe
    assert res["chance_pck2"] == probe.chance_pck(proc.grid, 2) and res["grid"] == list(proc.grid)
    assert res["static"] == probe.static_pck(samples, proc.token_px, proc.grid)
    results = {"stock": res}
    if n_models == 3:  # a trained model with heads, and one with a value above (c)'s axis
        results["gasp"] = {**res, "heads": res["native"], "head_layers": [0, 1], "tau": 0.07}
        results["vqa"] = _results([0.2, 0.3], temporal={1: 1.0, 2: 2.5}, grid=proc.grid)
    rows = [probe.correspondence_figure(vlm, proc, samples[0], 1, "cpu", n, charts.model_color(m))
            for m, n in enumerate(results)]
    img = probe.figure(results, rows)
    img.save(tmp_path / "probe.png")
    assert img.width == charts.FIG_W and (np.asarray(img.convert("L")) < 128).mean() > 0.01
    bottom = img.height - sum(r.height for r in rows)
    panels, rows_img = img.crop((0, 0, img.width, bottom)), img.crop((0, bottom, img.width, img.height))
    for m in range(n_models):  # each model's colour in the charts and on its row of (d)
        assert _has(panels, charts.model_color(m), 200) and _has(rows_img, charts.model_color(m))
    assert _has(panels, charts.GREY)  # the chance line
    # the zero-motion line (a) and curve (c); a probe.json from before it has none (counted: text antialiasing
    # draws a few pixels of every grey)
    without = probe.figure({name: {k: v for k, v in r.items() if k != "static"} for name, r in results.items()}, rows)
    count = lambda im: int((np.asarray(im.convert("RGB")) == charts.tint(charts.GREY, 0.6)).all(-1).sum())  # noqa: E731
    assert count(panels) > count(without.crop((0, 0, without.width, without.height - (img.height - bottom)))) + 200


# ----------------------------------------------------------------------------- every checkpoint kind (slow)

def _train(env, out, *extra):
    cmd = [sys.executable, "train.py", "--model", env["tiny"], "--data", env["scenes"], "--out", str(out),
           "--steps", "1", "--no-probe", "--size", "112", "--frames", "3", "--lattices", "8", "--embed-dim", "16",
           "--window", "4", "--sft-data", env["sft"], *extra]
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return str(out)


KINDS = {  # run name -> train.py flags: both baselines, both GASP objectives, LoRA and full fine-tuning
    "sft": ["--objective", "sft", "--no-export"],
    "vqa": ["--objective", "vqa", "--lora-rank", "4", "--no-export"],
    "corr": ["--objective", "corr", "--tau", "0.2", "--no-export"],
    "full": ["--objective", "full", "--lora-rank", "4", "--tau", "0.1"],  # with export/
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    for s in range(2):
        synth.synth_scene(tmp / "scenes" / f"scene_{s}", seed=s, num_frames=12, size=112)
    frames = tmp / "sft" / "clip0"  # instruction data: a folder of frames + a LLaVA-format JSON
    frames.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((56, 56, 3), 40 * i, np.uint8)).save(frames / f"{i:03d}.png")
    (tmp / "sft" / "sft.json").write_text(json.dumps([{"id": "0", "video": "clip0", "conversations": [
        {"from": "human", "value": "<video>\nIs the room bright?"}, {"from": "gpt", "value": "no"}]}]))
    env = {"tiny": M.build_tiny(str(tmp / "tiny"), layers=2, hidden=64), "scenes": str(tmp / "scenes"),
           "sft": str(tmp / "sft" / "sft.json")}
    return {**env, "tmp": tmp, **{kind: _train(env, tmp / kind, *flags) for kind, flags in KINDS.items()}}


def _bare(name: str) -> str:
    """A parameter's name without the GASP / peft wrapper prefixes."""
    return name.replace("vlm.", "").replace("base_model.model.", "")


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_checkpoint_kind_loads_and_probes(runs, kind):
    saved = checkpoint.read(runs[kind])
    vlm, proc, gasp, cfg = M.load(os.path.join(runs[kind], "checkpoint.pt"))
    geometry = kind in ("corr", "full")
    assert (gasp is not None) == geometry and cfg["objective"] == kind and proc.size == (112, 112)
    own = {_bare(n): p for n, p in (gasp or vlm).named_parameters()}
    assert all(torch.equal(own[_bare(n)].float(), t.float()) for n, t in saved["weights"].items())  # trained weights in
    if "--lora-rank" in KINDS[kind]:
        assert any("lora_B" in n and t.abs().sum() > 0 for n, t in saved["weights"].items())  # LoRA, trained, active
    samples = probe.probe_samples(runs["scenes"], proc.size, 3, 1)
    res = probe.run_probe(vlm, proc, samples, gasp, cfg["tau"])
    assert np.isfinite(res["native"]["pck2"]).all() and len(res["native"]["pck2"]) == 2
    if geometry:
        assert gasp.r == 16 and res["tau"] == {"corr": 0.2, "full": 0.1}[kind] and len(res["heads"]["pck2"]) == 2
    else:
        assert "heads" not in res


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["corr", "full"])  # full fine-tuning (trained LLM in float32) and LoRA
def test_bfloat16_checkpoint_probes_in_float32_metrics(runs, kind):
    vlm, proc, gasp, cfg = M.load(runs[kind], dtype="bfloat16")
    assert cfg["dtype"] == "bfloat16" and M.find_module(vlm, "visual").patch_embed.proj.weight.dtype == torch.bfloat16
    res = probe.run_probe(vlm, proc, probe.probe_samples(runs["scenes"], proc.size, 3, 1), gasp, cfg["tau"])
    assert np.isfinite(res["native"]["pck2"]).all() and np.isfinite(res["heads"]["rho"]).all()


@pytest.mark.slow
def test_probe_cli_compares_every_kind_and_the_export(runs):
    models = [runs["sft"], os.path.join(runs["vqa"], "checkpoint.pt"), os.path.join(runs["corr"], "checkpoint.pt"),
              runs["full"], os.path.join(runs["full"], "export")]
    out = runs["tmp"] / "probe"
    cmd = [sys.executable, "probe.py", *[a for m in models for a in ("--model", m)], "--scenes", runs["scenes"],
           "--frames", "3", "--limit", "1", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((out / "probe.json").read_text())
    assert list(results) == ["sft", "vqa", "corr", "full", "full/export"]  # default names, unique
    assert [("heads" in r) for r in results.values()] == [False, False, True, True, False]
    assert results["full"]["tau"] == 0.1 and results["full"]["config"]["embed_dim"] == 16
    assert results["sft"]["dtype"] == "float32" and Image.open(out / "probe.png").width == charts.FIG_W
    assert all(name in res.stdout for name in results)


@pytest.mark.slow
def test_eager_attention_probes_as_sdpa(runs):
    got = {}
    for attn in ("sdpa", "eager"):
        vlm, proc, _, _ = M.load(runs["tiny"], attn_implementation=attn)
        proc = M.Processor(vlm.config, proc.tokenizer, (112, 112))
        got[attn] = probe.run_probe(vlm, proc, probe.probe_samples(runs["scenes"], proc.size, 3, 1))["native"]
    assert got["eager"]["pck2"] == pytest.approx(got["sdpa"]["pck2"], abs=0.02)


@pytest.mark.slow
def test_model_load_reads_a_stock_folder(tmp_path):
    path = M.build_tiny(str(tmp_path / "tiny"), layers=2, hidden=64)
    vlm, proc, gasp, cfg = M.load(path, dtype="bfloat16")
    assert gasp is None and cfg == {"model": path} and len(M.llm_layers(vlm)) == 2
    assert next(vlm.parameters()).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- any video, no ground truth

VIDEO_KINDS = ("qwen2_5_vl", "llava_onevision")  # a patchified video with M-RoPE; a pooled video with a newline


@pytest.fixture(scope="module")
def video_env(tmp_path_factory):
    """A rendered scene's frames as a folder and as an mp4, and two families' tiny models (2 layers)."""
    tmp = tmp_path_factory.mktemp("video")
    synth.synth_scene(tmp / "scene", seed=1, num_frames=6, size=112)
    env = {"folder": str(tmp / "scene" / "images"), "tmp": tmp,
           **{k: M.build_tiny(str(tmp / k), k, layers=2, hidden=64) for k in VIDEO_KINDS}}
    try:
        import av
    except ImportError:
        return env
    with av.open(str(tmp / "scene.mp4"), "w") as c:
        stream = c.add_stream("mpeg4", rate=6)
        stream.width, stream.height, stream.pix_fmt = 112, 112, "yuv420p"
        for f in sorted(os.listdir(env["folder"])):
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(os.path.join(env["folder"], f))), format="rgb24")
            c.mux(stream.encode(frame))
        c.mux(stream.encode())
    return {**env, "mp4": str(tmp / "scene.mp4")}


def _video(monkeypatch, out, *argv):
    """probe.main on --video; returns video.json."""
    monkeypatch.setattr(sys, "argv", ["probe.py", *argv, "--out", str(out), "--device", "cpu"])
    probe.main()
    with open(os.path.join(out, "video.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("source", ["folder", "mp4"])
@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_video_figure_is_drawn_from_a_folder_and_an_mp4(video_env, monkeypatch, tmp_path, kind, source):
    if source == "mp4":
        pytest.importorskip("av")
    res = _video(monkeypatch, tmp_path, "--video", video_env[source], "--model", video_env[kind], "--frames", "3",
                 "--points", "20,30", "100,100", "--layers", "all", "--size", "112")
    run = res["models"][os.path.basename(video_env[kind])]
    assert res["frames"] == 3 and res["frame_size"] == [112, 112] and res["points"] == [[20, 30], [100, 100]]
    assert sorted(run["layers"]) == ["0", "1"] and len(run["layers"]["1"]) == 2  # every layer, both queries
    h, w = run["grid"]
    for query in run["layers"]["1"]:
        assert [m["frame"] for m in query["matches"]] == [0, 1]  # every earlier frame
        for m in query["matches"]:
            assert 0 <= m["token"][0] < w and 0 <= m["token"][1] < h and 1 / (h * w) <= m["confidence"] <= 1
            assert m["px"] == pytest.approx([(t + 0.5) * run["token_px"] * 112 / run["size"][0] for t in m["token"]],
                                            abs=0.05)
    assert run["layers"]["0"][0]["token"] == [int(20 * run["size"][0] / 112 // run["token_px"]),
                                              int(30 * run["size"][0] / 112 // run["token_px"])]
    img = Image.open(tmp_path / "video.png")
    assert img.width == charts.FIG_W
    assert _has(img, charts.model_color(0)) and _has(img, correspondence.HEAT, 100)  # swatch, attention
    for j in range(2):  # each query's ring colour
        assert _has(img, correspondence.query_color(j), 100)


@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_video_argmax_is_the_argmax_of_the_models_eager_attention(video_env, monkeypatch, tmp_path, kind):
    """video.json's match of every query on every earlier frame is the argmax of what the model itself computes:
    its eager attention weights (output_attentions) of the query's token in the last frame, restricted to the
    earlier frame's tokens, renormalised and averaged over attention heads; the confidence is that maximum."""
    res = _video(monkeypatch, tmp_path, "--video", video_env["folder"], "--model", video_env[kind], "--frames", "4",
                 "--layers", "1", "--attn-implementation", "eager")
    run = next(iter(res["models"].values()))
    vlm, proc, _, _ = M.load(video_env[kind], attn_implementation="eager")
    clip = probe.frames_io.read_clip(video_env["folder"], 4)
    inputs = proc([clip], [M.PROMPT])
    tmap = proc.token_map(inputs["input_ids"][0], 4)
    with torch.no_grad():
        attn = vlm(**inputs, output_attentions=True).attentions[1][0]  # (H, S, S)
    h, w = proc.grid
    assert run["size"] == list(proc.size) and len(run["layers"]["1"]) == 9  # the default 3x3 lattice
    for query in run["layers"]["1"]:
        x, y = query["token"]
        for m in query["matches"]:
            P = attn[:, tmap[3, y, x], tmap[m["frame"]].flatten()]  # (H, T): the earlier frame's keys
            P = (P / P.sum(-1, keepdim=True)).mean(0)
            assert m["token"] == [int(P.argmax()) % w, int(P.argmax()) // w]
            assert m["confidence"] == pytest.approx(float(P.max()), abs=1e-5)


def test_video_too_long_for_the_context_names_the_frames_that_fit(video_env, monkeypatch, capsys, tmp_path):
    """A context of max_position_embeddings = the other tokens + 2.5 frames: --frames 3 is refused naming 2, which
    runs, and 3 frames would need more positions than the context has."""
    import shutil
    folder = tmp_path / "short"
    shutil.copytree(video_env["qwen2_5_vl"], folder)
    _, proc, _, _ = M.load(str(folder), size=(112, 112))
    T = proc.grid[0] * proc.grid[1]
    other = proc([[np.zeros((112, 112, 3), np.uint8)]], [M.PROMPT])["input_ids"].shape[1] - T
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = other + 2 * T + T // 2
    (folder / "config.json").write_text(json.dumps(cfg))
    base = ["--video", video_env["folder"], "--model", str(folder), "--size", "112"]
    with pytest.raises(SystemExit) as e:
        _video(monkeypatch, tmp_path / "out", *base, "--frames", "3")
    assert e.value.code == 2 and "at most 2 frames fit" in capsys.readouterr().err
    assert _video(monkeypatch, tmp_path / "out", *base, "--frames", "2")["models"]["short"]["frames_that_fit"] == 2
    three = proc([np.zeros((3, 112, 112, 3), np.uint8)], [M.PROMPT])["input_ids"].shape[1]
    assert three > cfg["text_config"]["max_position_embeddings"] >= three - T


@pytest.mark.parametrize("argv, message", [
    (["--points", "112,10"], "--points 112,10: outside the last frame (112x112 px"),
    (["--points", "5,-1"], "--points 5,-1: outside the last frame"),
    (["--points", "5"], "--points '5': not X,Y"),
    (["--layers", "7"], "out of range; the model has layers 0..1"),
    (["--sharpen", "2"], "belong to the scene probe"),
])
def test_video_misuse_is_a_usage_error(video_env, monkeypatch, capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as e:
        _video(monkeypatch, tmp_path, "--video", video_env["folder"], "--model", video_env["qwen2_5_vl"],
               "--size", "112", *argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_video_flags_need_video(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["probe.py", "--points", "1,1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        probe.main()
    assert e.value.code == 2 and "--points, --layers and --size belong to --video" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data parallel, device map

@pytest.mark.slow
def test_two_processes_write_the_one_process_probe_json(runs, tmp_path):
    """torchrun --nproc_per_node 2: each rank matches its samples, rank 0 pools them in sample order, so probe.json
    (the native Q-K and the GASP heads' numbers, of a stock model and a checkpoint) is the one process's."""
    port = distributed.free_port()
    args = ["--model", runs["tiny"], "--model", runs["corr"], "--scenes", runs["scenes"], "--frames", "3",
            "--limit", "3"]  # samples 0, 2 on rank 0, sample 1 on rank 1
    got = {}
    for nproc, head in ((1, [sys.executable]), (2, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                   "2", "--master_port", str(port)])):
        out = tmp_path / f"probe{nproc}"
        res = subprocess.run([*head, "probe.py", *args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        got[nproc] = json.loads((out / "probe.json").read_text())
        assert (out / "probe.png").exists() and res.stdout.count("wrote ") == 1  # rank 0 alone writes and prints
    assert got[1]["corr"]["heads"]["n"][0] > 0 and got[1]["corr"]["samples"] == 3
    assert got[2] == got[1]


def test_device_map_auto_probes_as_one_device(tiny_probe, tmp_path):
    """model.load(device_map="auto") (accelerate's placement; on this CPU host: everything on the CPU) probes as
    the model loaded whole; a training checkpoint is refused, naming the file and the fix."""
    vlm, proc, samples, base = tiny_probe
    path = M.build_tiny(str(tmp_path / "tiny"), layers=2, hidden=64)  # the fixture's model: same seed, same weights
    mapped, proc, _, _ = M.load(path, size=(112, 112), device_map="auto")
    assert probe.run_probe(mapped, proc, samples, device=str(mapped.device))["native"] == base["native"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="checkpoint.pt: device_map 'auto' loads stock models only.*export it"):
        M.load(str(tmp_path / "run"), device_map="auto")
