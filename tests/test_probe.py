"""probe.py metrics (G8-G10) on constructed q/k, and the plots."""

import numpy as np
import pytest
import torch

import probe

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


def test_confident_correct_and_unsure_wrong_gives_positive_rho():
    sample = _shift_sample()
    q, k = _identity_qk()
    g = torch.Generator().manual_seed(0)
    noisy = torch.arange(H * W) % 2 == 0  # half the tokens: random codes (wrong, low confidence)
    q[:, noisy] = torch.randn(3, int(noisy.sum()), 1, 128, generator=g) * 0.1
    res = probe.summarize([probe.match(q, k, sample, PX, (H, W), scale=20.0)])
    assert 0.2 < res["pck2"][0] < 0.95
    assert res["rho"][0] > 0.3


def test_random_qk_scores_near_chance():
    sample = _shift_sample(F=4, shift=0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, H * W, 4, 16, generator=g), torch.randn(4, H * W, 4, 16, generator=g)
    rec = probe.match(q, k, sample, PX, (H, W), scale=0.25)
    ys, xs = np.mgrid[0:H, 0:W]
    chance = np.mean([((xs - x) ** 2 + (ys - y) ** 2 <= 4).sum() / (H * W) for y in range(H) for x in range(W)])
    assert abs(rec["hit2"].mean() - chance) < 0.08


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


def test_plots_are_written_and_not_blank(tmp_path):
    sample = _shift_sample()
    q, k = _identity_qk()
    r = probe.summarize([probe.match(q, k, sample, PX, (H, W), 50.0)] * 2)
    img = probe.figure({"base": {"native": r}, "gasp": {"native": r, "heads": r, "head_layers": [0, 1]}}, [])
    path = tmp_path / "probe.png"
    img.save(path)
    arr = np.asarray(img.convert("L"))
    assert path.stat().st_size > 1000 and (arr < 128).mean() > 0.01
    assert "1.000" in probe.table({"base": {"native": r}})


def test_load_for_probe_reads_a_stock_folder(tmp_path):
    import model as M
    path = M.build_tiny(str(tmp_path / "tiny"), layers=2, hidden=64)
    vlm, proc, gasp = probe.load_for_probe(path)
    assert gasp is None and len(M.llm_layers(vlm)) == 2
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        probe.load_for_probe(str(tmp_path / "missing.pt"))
