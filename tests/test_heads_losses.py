"""Heads (G1-G2) and losses (G3-G7) against values worked by hand; the fast kernel (kernels/infonce.py)
against the plain losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from heads import CorrespondenceHeads, fold_kv, repeat_kv
from kernels import infonce
from kernels.infonce import PairNLL
from losses import (attention_loss, bilinear, candidates, depth_loss, frame_pairs, gasp_losses, grid_coords, info_nce,
                    masked_mean, pair_targets, token_depth, total_loss)


def test_svd_init_is_normalised_projection_on_top_query_directions():
    torch.manual_seed(0)
    d_q, d, r = 64, 48, 16
    w_q = [torch.randn(d_q, d) for _ in range(3)]
    heads = CorrespondenceHeads(3, d_q, r)
    heads.init_from_query_projections(w_q, "qk")
    q = torch.randn(3, 10, d_q)
    for l in range(3):
        U = torch.linalg.svd(w_q[l], full_matrices=False).U
        want = F.normalize(F.gelu(q[l] @ U[:, :r]), dim=-1)  # W2 = [I_r | 0] keeps the top r directions
        torch.testing.assert_close(heads(q)[l], want, atol=1e-5, rtol=1e-5)


def test_svd_init_hidden_input_reads_x_through_sigma_v():
    torch.manual_seed(0)
    w_q = torch.randn(32, 24)
    heads = CorrespondenceHeads(1, 24, 8)
    heads.init_from_query_projections([w_q], "hidden")
    x = torch.randn(1, 5, 24)
    U, S, Vh = torch.linalg.svd(w_q, full_matrices=False)
    want = F.normalize(F.gelu(x[0] @ (S[:8, None] * Vh[:8]).T / S[0]), dim=-1)
    torch.testing.assert_close(heads(x)[0], want, atol=1e-5, rtol=1e-5)
    assert torch.linalg.matrix_norm(heads.w1[0], ord=2) <= 1 + 1e-5


def test_repeat_kv_maps_query_head_to_its_group():
    k = torch.arange(2 * 3).float().view(1, 6)  # 2 kv heads of size 3
    out = repeat_kv(k, num_heads=4, attn_dim=3).view(4, 3)
    assert out[0].tolist() == out[1].tolist() == [0, 1, 2]
    assert out[2].tolist() == out[3].tolist() == [3, 4, 5]


def test_heads_read_gqa_keys_unrepeated():
    torch.manual_seed(0)
    heads = CorrespondenceHeads(2, 4 * 3, 5)  # 4 query heads of size 3
    k = torch.randn(2, 7, 2 * 3)  # 2 key heads
    torch.testing.assert_close(heads(k, attn_dim=3), heads(repeat_kv(k, 4, 3)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(heads(k[1:], slice(1, 2), attn_dim=3), heads(repeat_kv(k, 4, 3))[1:],
                               atol=1e-6, rtol=1e-5)
    assert fold_kv(torch.ones(1, 12), 2, 3).tolist() == [[2.0] * 6]


@pytest.mark.parametrize("read", [bilinear, infonce.bilinear], ids=["plain", "fast"])
def test_bilinear_point_features_on_token_grid(read):
    maps = torch.zeros(1, 2, 2, 3)  # (B, r, h = 2, w = 3), token_px 10
    maps[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    maps[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    uv = torch.tensor([[[5.0, 5.0], [10.0, 5.0], [15.0, 5.0], [-7.0, 2.0]]])  # centre 0, midway, centre 1, outside
    tokens = maps.flatten(2).transpose(1, 2)  # (B, T, r)
    out = F.normalize(read(tokens, grid_coords(uv, 2, 3, token_px=10), 2, 3), dim=-1)[0]
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[1], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(out[2], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out[3], torch.tensor([1.0, 0.0]))  # border: the edge token


@pytest.mark.parametrize("read", [bilinear, infonce.bilinear], ids=["plain", "fast"])
def test_bilinear_equals_grid_sample(read):
    g = torch.Generator().manual_seed(0)
    for h, w in ((4, 5), (1, 3), (3, 1)):
        maps = torch.randn(2, 3, 6, h, w, generator=g, requires_grad=True)  # (L, B, C, h, w)
        xy = torch.rand(3, 40, 2, generator=g) * 2.4 - 1.2  # inside and beyond the edge centres
        xy[:, :3] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -0.5]])  # exactly on edge centres
        want = torch.stack([F.grid_sample(m, xy[:, None], mode="bilinear", padding_mode="border",
                                          align_corners=True)[:, :, 0].transpose(1, 2) for m in maps])
        got = read(maps.flatten(3).transpose(2, 3), xy, h, w)  # (L, B, N, C)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        upstream = torch.randn(got.shape, generator=g)
        g_want, = torch.autograd.grad(want, maps, upstream)
        g_got, = torch.autograd.grad(got, maps, upstream)
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


def _nce(ea, eb, uv_b, valid, tau, fast=False):
    cand = candidates(uv_b, valid, token_px=10)
    if fast:
        return masked_mean(infonce.pair_nll(ea / tau, eb, cand), valid)
    return info_nce(ea / tau, eb, cand, valid)


def test_pair_nll_gradient_is_exact():
    torch.manual_seed(0)
    ea, eb = (torch.randn(2, 6, 3, dtype=torch.double, requires_grad=True) for _ in range(2))
    cand = (torch.rand(2, 6, 6) > 0.3) | torch.eye(6, dtype=torch.bool)
    assert torch.autograd.gradcheck(PairNLL.apply, (ea, eb, cand))
    logits = (ea @ eb.transpose(1, 2)).masked_fill(~cand, -torch.inf)
    want = torch.logsumexp(logits, -1) - logits.diagonal(dim1=1, dim2=2)
    torch.testing.assert_close(PairNLL.apply(ea, eb, cand), want)


def _pair_nll_reference(ea, eb, cand):
    """G4 the plain autograd way, in float64: -log_softmax over the masked (B, N, N) logits, at the positive."""
    logits = (ea.double() @ eb.double().transpose(1, 2)).masked_fill(~cand, -torch.inf)
    return -torch.log_softmax(logits, -1).diagonal(dim1=1, dim2=2)


def _pair_nll_case(B, N, r=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ea = F.normalize(torch.randn(B, N, r, generator=g), dim=-1) / 0.07  # unit points / τ, as gasp_losses gives them
    eb = F.normalize(torch.randn(B, N, r, generator=g), dim=-1)
    cand = (torch.rand(B, N, N, generator=g) > 0.4) | torch.eye(N, dtype=torch.bool)
    cand[:, 1] = False  # a row with the positive alone
    cand[:, 1, 1] = True
    return ea, eb, cand, torch.rand(B, N, generator=g)  # the last: an upstream gradient


def test_pair_nll_equals_plain_log_softmax_for_any_chunking():
    for B, N in ((1, 5), (3, 7), (4, 33)):
        ea, eb, cand, g = _pair_nll_case(B, N)
        for pairs in (1, 2, B, B + 5):  # chunks of 1 pair (smaller than B), 2 (B odd: a short last chunk), all
            for dtype in (torch.float32, torch.bfloat16):  # bf16 inputs are read in float32
                x = [t.to(dtype).clone().requires_grad_() for t in (ea, eb)]
                ref = [t.to(dtype).double().requires_grad_() for t in (ea, eb)]
                want = _pair_nll_reference(*ref, cand)
                want.backward(g.double())
                got = PairNLL.apply(*x, cand, pairs * N * N * 4)
                got.backward(g)
                assert got.dtype == torch.float32
                torch.testing.assert_close(got.double(), want.detach(), atol=2e-5, rtol=1e-5)
                for t, w in zip(x, ref):
                    assert t.grad.dtype == dtype
                    torch.testing.assert_close(t.grad.double(), w.grad, atol=2e-5 if dtype == torch.float32 else 1e-2,
                                               rtol=1e-5 if dtype == torch.float32 else 1e-2)


def test_pair_nll_under_bf16_autocast_is_the_gradient_of_its_forward():
    """Under autocast the logits come from bf16 matmuls, in backward as in forward (also when backward runs
    outside autocast, as in train.py), and the logsumexp is float32: the NLL equals, to float32 precision,
    the float64 one of the bf16-rounded logits, and the gradient is that reference's (rounded to a straight
    through) up to the bf16 gradient matmuls. Backward logits in float32 against a bf16 forward miss by ~1 %."""
    ea, eb, cand, g = _pair_nll_case(3, 40)
    ref = [t.to(torch.bfloat16).double().requires_grad_() for t in (ea, eb)]
    logits = ref[0] @ ref[1].transpose(1, 2)
    logits = logits + (logits.detach().to(torch.bfloat16).double() - logits.detach())  # bf16 values, exact gradient
    want = -torch.log_softmax(logits.masked_fill(~cand, -torch.inf), -1).diagonal(dim1=1, dim2=2)
    want.backward(g.double())
    for pairs in (1, 3):
        x = ea.clone().requires_grad_(), eb.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = PairNLL.apply(*x, cand, pairs * 40 * 40 * 6)
        got.backward(g)
        assert got.dtype == torch.float32 and (got >= 0).all()
        torch.testing.assert_close(got.double(), want.detach(), atol=1e-5, rtol=1e-5)
        for t, w in zip(x, ref):
            err = (t.grad.double() - w.grad).norm() / w.grad.norm()
            assert err < 4e-3, err


def test_pair_nll_gradient_is_exact_in_chunks():
    torch.manual_seed(0)
    ea, eb = (torch.randn(3, 5, 4, dtype=torch.double, requires_grad=True) for _ in range(2))
    cand = (torch.rand(3, 5, 5) > 0.3) | torch.eye(5, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a, b: PairNLL.apply(a, b, cand, 2 * 5 * 5 * 8), (ea, eb))


def _rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16-autocast"])
def test_fast_info_nce_equals_the_plain_one_in_any_chunking(amp):
    """kernels/infonce.pair_nll (masked-mean over valid tracks) against losses.info_nce, values and gradients,
    with the C_i mask (a row with the positive alone) and invalid tracks; chunks of 1 pair, 2 and all."""
    L, P, N = 2, 3, 33
    ea, eb, cand, _ = _pair_nll_case(L * P, N, seed=1)
    ea, eb, cand = ea.view(L, P, N, -1), eb.view(L, P, N, -1), cand[:P]
    valid = torch.rand(P, N, generator=torch.Generator().manual_seed(2)) > 0.3
    weight = torch.tensor([0.7, 1.3])  # a different upstream gradient per layer
    grads = {}
    for name, fn in [("plain", lambda a, b: info_nce(a, b, cand, valid))] + [
            (f"fast{c}", lambda a, b, c=c: masked_mean(infonce.pair_nll(a, b, cand, c * N * N * 6), valid))
            for c in (1, 2, P)]:
        x = [t.clone().requires_grad_() for t in (ea, eb)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = fn(*x)
        (out * weight).sum().backward()
        assert out.dtype == torch.float32 and out.shape == (L,)
        grads[name] = (out.detach(), *(t.grad for t in x))
    for name in ("fast1", "fast2", f"fast{P}"):
        torch.testing.assert_close(grads[name][0], grads["plain"][0], atol=1e-5, rtol=1e-5)
        for got, want in zip(grads[name][1:], grads["plain"][1:]):
            assert _rel_err(got, want) < (1e-5 if not amp else 1e-2), (name, _rel_err(got, want))


def _two_paths_case(seed=0):
    """A demo-shaped sample in miniature: 4 frames, anchor 2, 40 tracks on a 5 x 6 token grid of 10 px, some
    invisible, pairs of tracks within a token of each other (outside each other's C_i), some beyond the edge token
    centres, tokens without valid depth. e_q: frames 2.., e_k: frames 0..2, as GASP.forward gives them."""
    g = torch.Generator().manual_seed(seed)
    Fr, N, h, w, px, r, anchor = 4, 40, 5, 6, 10, 8, 2
    tracks = torch.rand(Fr, N, 2, generator=g) * torch.tensor([w * px, h * px])
    tracks[:, 1] = tracks[:, 0] + 3.0  # within a token of track 0
    tracks[:, 2] = torch.tensor([-4.0, 57.0])  # beyond the edge centres
    depth = torch.rand(Fr, h * px, w * px, generator=g) + 1
    depth[:, :px, :px] = 0.0  # a token without valid depth
    sample = {"tracks": tracks, "visible": torch.rand(Fr, N, generator=g) > 0.25,
              "track_depth": torch.rand(Fr, N, generator=g) + 1, "depth": depth, "anchor": anchor}
    e_q = F.normalize(torch.randn(3, Fr - anchor, h, w, r, generator=g), dim=-1)
    e_k = F.normalize(torch.randn(3, anchor + 1, h, w, r, generator=g), dim=-1)
    return e_q, e_k, pair_targets(sample, px, (h, w)), anchor


@pytest.mark.parametrize("amp, dtype", [(False, torch.float32), (True, torch.float32), (True, torch.bfloat16)],
                         ids=["float32", "bf16-autocast", "bf16-autocast-bf16-heads"])
def test_fast_gasp_losses_equal_the_plain_ones(amp, dtype):
    """gasp_losses(fast=True) (kernels/infonce.py: G3 as a corner-weight matmul, G4 chunked) against the plain
    G3-G5 of losses.py: L_corr, L_depth and the gradients into both sides' embeddings. Under bf16 autocast the
    heads give bf16 embeddings (the last case)."""
    e_q, e_k, t, anchor = _two_paths_case()
    assert not t["valid"].all() and not t["cand"][:, 0, 1].any()  # invalid tracks and near tracks are in the case
    out = {}
    for fast in (False, True):
        x = [e.to(dtype).clone().requires_grad_() for e in (e_q, e_k)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            corr, depth = gasp_losses(*x, t, tau=0.07, q_offset=anchor, fast=fast)
        total_loss(torch.zeros(()), corr * torch.tensor([1.0, 0.5, 2.0]), depth).backward()
        out[fast] = (corr.detach(), depth.detach(), *(e.grad for e in x))
    (c0, d0, *g0), (c1, d1, *g1) = out[False], out[True]
    # bf16 heads: the fast read rounds its corner weights to bf16, the plain one reads in float32
    tol, grad_tol = (1e-5, 1e-5) if not amp else {torch.float32: (1e-5, 1e-2), torch.bfloat16: (1e-2, 3e-2)}[dtype]
    torch.testing.assert_close(c1, c0, atol=tol, rtol=tol)
    torch.testing.assert_close(d1, d0, atol=tol, rtol=tol)
    for got, want in zip(g1, g0):
        assert got.dtype == dtype and _rel_err(got, want) < grad_tol, _rel_err(got, want)


@pytest.mark.parametrize("fast", [False, True])
def test_info_nce_worked_example(fast):
    e = torch.eye(2)[None, None]  # (L=1, P=1, N=2, r=2)
    far = torch.tensor([[[0.0, 0.0], [100.0, 0.0]]])  # 10 tokens apart
    valid = torch.ones(1, 2, dtype=torch.bool)
    loss = _nce(e, e, far, valid, tau=1.0, fast=fast)
    assert math.isclose(loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)  # -log(e / (e + 1))
    near = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])  # half a token apart: not negatives of each other
    assert _nce(e, e, near, valid, tau=1.0, fast=fast).item() == 0.0
    swapped = torch.eye(2).flip(0)[None, None]  # matches the wrong track
    assert _nce(e, swapped, far, valid, tau=1.0, fast=fast) > loss
    # an invalid track is no negative
    assert _nce(e, e, far, torch.tensor([[True, False]]), tau=1.0, fast=fast).item() == 0.0


def test_depth_loss_worked_example_and_ordering():
    ea = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)  # (L, P, N, r)
    tb = torch.eye(2).view(1, 1, 2, 2)  # (L, P, T, r)
    Db = torch.tensor([[2.0, 4.0]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    p = math.e / (math.e + 1)
    d_hat = 2 * p + 4 * (1 - p)
    want = abs(2 - d_hat) / (2 + d_hat + 1e-6)
    S = lambda tau: torch.einsum("lpnr,lptr->lpnt", ea / tau, tb)  # noqa: E731
    got = depth_loss(S(1.0), Db, torch.tensor([[2.0]]), valid)
    assert math.isclose(got.item(), want, rel_tol=1e-5)
    sharp = depth_loss(S(0.1), Db, torch.tensor([[2.0]]), valid)  # more mass on the right token
    wrong = depth_loss(S(0.1), Db, torch.tensor([[4.0]]), valid)  # mass on the wrong depth
    assert sharp < got < wrong


def _reference_losses(e_q, e_k, sample, px, tau):
    """G3-G5 written the direct way: grid_sample point embeddings, the full (N, N) similarity,
    means pooled over every (pair, valid track)."""
    tracks, visible, anchor = sample["tracks"], sample["visible"], sample["anchor"]
    L, Fr, h, w, r = e_q.shape
    Db = token_depth(sample["depth"], px).flatten(1)  # (F, T)
    eye = torch.eye(tracks.shape[1], dtype=torch.bool)

    def points(emb, uv):  # (L, h, w, r), (N, 2) -> (L, N, r)
        g = torch.stack([(uv[:, 0] / px - 0.5) / (w - 1), (uv[:, 1] / px - 0.5) / (h - 1)], -1) * 2 - 1
        out = F.grid_sample(emb.permute(0, 3, 1, 2), g[None, None].expand(L, 1, -1, 2), mode="bilinear",
                            padding_mode="border", align_corners=True)[:, :, 0]  # (L, r, N)
        return F.normalize(out.transpose(1, 2), dim=-1)

    corr, depth, count = 0, 0, 0
    for a, b in frame_pairs(Fr, anchor).tolist():
        ea, eb = points(e_q[:, a], tracks[a]), points(e_k[:, b], tracks[b])
        valid = visible[a] & visible[b]
        negative = (torch.cdist(tracks[b], tracks[b]) / px > 1) & valid[None, :] & valid[:, None]
        logits = (torch.einsum("lnr,lmr->lnm", ea, eb) / tau).masked_fill(~(negative | eye), -torch.inf)
        nll = torch.logsumexp(logits, -1) - logits.diagonal(dim1=1, dim2=2)  # (L, N)
        A = torch.softmax(torch.einsum("lnr,ltr->lnt", ea, e_k[:, b].flatten(1, 2)) / tau, -1)
        d, d_hat = sample["track_depth"][b], A @ Db[b]
        corr = corr + (nll * valid).sum(1)
        depth = depth + ((d - d_hat).abs() / (d + d_hat + 1e-6) * valid).sum(1)
        count += valid.sum()
    return corr / count, depth / count


@pytest.mark.parametrize("fast", [False, True])
def test_losses_equal_the_direct_computation(fast):
    sample = _sample(Fr=4, N=30)
    sample["anchor"] = 2
    sample["tracks"][0, :3] = torch.tensor([[-5.0, 3.0], [44.0, 41.0], [39.5, 0.0]])  # beyond the token centres
    sample["visible"][1, ::4] = False
    sample["track_depth"] = torch.rand(4, 30) + 1
    sample["depth"] = torch.rand(4, 40, 40) + 1
    e_q, e_k = F.normalize(torch.randn(2, 4, 4, 4, 8), dim=-1), F.normalize(torch.randn(2, 4, 4, 4, 8), dim=-1)
    want = _reference_losses(e_q, e_k, sample, 10, 0.07)
    got = gasp_losses(e_q, e_k, pair_targets(sample, 10, (4, 4)), tau=0.07, fast=fast)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_token_depth_is_median_of_valid_pixels():
    depth = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, float("nan"), 0.0, -1.0]])[None]  # (1, 2, 4), token_px 2
    out = token_depth(depth, token_px=2)
    assert out.shape == (1, 1, 2)
    assert out[0, 0, 0].item() == 2.0  # median of {1, 2, 3}
    assert out[0, 0, 1].item() == 0.0  # no valid pixel


def _token_depth_reference(depth, px):
    """D_j by hand: the lower median (as torch.median) of each token's pixels that are > 0 and finite, 0 if none."""
    Fr, H, W = depth.shape
    out = torch.zeros(Fr, H // px, W // px)
    for f in range(Fr):
        for i in range(H // px):
            for j in range(W // px):
                cell = depth[f, i * px:(i + 1) * px, j * px:(j + 1) * px].flatten()
                cell = cell[torch.isfinite(cell) & (cell > 0)].sort().values
                out[f, i, j] = cell[(len(cell) - 1) // 2] if len(cell) else 0.0
    return out


def test_token_depth_equals_the_median_by_hand_with_invalid_pixels():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(3, 24, 30, generator=g) * 4 + 0.1  # tokens of 6 px: a 4 x 5 grid
    u = torch.rand(depth.shape, generator=g)
    for lo, hi, value in ((0.0, 0.1, 0.0), (0.1, 0.2, float("nan")), (0.2, 0.25, float("inf")),
                          (0.25, 0.3, -1.0), (0.3, 0.32, -float("inf"))):
        depth[(u >= lo) & (u < hi)] = value
    depth[0, :6, :6] = 0.0  # a token without a valid pixel
    depth[1, :6, 6:12] = float("nan")
    depth[2, :6, 12:18] = torch.where(torch.arange(36).view(6, 6) < 35, torch.inf, 2.5)  # one valid pixel
    got = token_depth(depth, 6)
    torch.testing.assert_close(got, _token_depth_reference(depth, 6), atol=0, rtol=0)
    assert got[0, 0, 0] == 0 and got[1, 0, 1] == 0 and got[2, 0, 2] == 2.5


def test_candidates_equal_the_distance_definition():
    g = torch.Generator().manual_seed(0)
    P, N, px = 3, 41, 10
    uv = (torch.rand(P, N, 2, generator=g) * 40 * 8).round() / 8  # 1/8 px: squared distances exact in float32
    uv[:, 1] = uv[:, 0] + torch.tensor([6.0, 8.0])  # exactly 1 token apart: not a negative
    uv[:, 2] = uv[:, 0] + torch.tensor([6.0, 8.125])  # just beyond
    valid = torch.rand(P, N, generator=g) > 0.2
    valid[:, :3] = True
    valid[2] = False  # nothing valid: the diagonal alone
    got = candidates(uv, valid, px)
    dist = torch.cdist(uv.double(), uv.double()) / px
    want = ((dist > 1) & valid[:, None, :] & valid[:, :, None]) | torch.eye(N, dtype=torch.bool)
    assert torch.equal(got, want)
    assert not got[:, 0, 1].any() and got[:2, 0, 2].all() and torch.equal(got[2], torch.eye(N, dtype=torch.bool))


def test_pair_targets_read_each_target_frame_once():
    sample = _sample(Fr=5, N=7)
    sample["anchor"] = 2
    sample["depth"] = torch.rand(5, 40, 40) * 3 + torch.arange(5.0)[:, None, None]  # a different depth per frame
    t = pair_targets(sample, 10, (4, 4))
    assert t["b"].tolist() == [0, 1, 2, 2]
    torch.testing.assert_close(t["D_b"], token_depth(sample["depth"][t["b"]], 10).flatten(1), atol=0, rtol=0)


def _sample(Fr=3, N=5, h=4, w=4, px=10, visible=True, depth=1.0):
    g = torch.Generator().manual_seed(0)
    return {"tracks": torch.rand(Fr, N, 2, generator=g) * px * w,
            "visible": torch.full((Fr, N), visible),
            "track_depth": torch.full((Fr, N), 2.0),
            "depth": torch.full((Fr, h * px, w * px), depth),
            "anchor": 1}


@pytest.mark.parametrize("fast", [False, True])
def test_no_nan_with_zero_visible_tracks_or_all_invalid_depth(fast):
    for sample in (_sample(visible=False), _sample(depth=0.0)):
        e_q = F.normalize(torch.randn(2, 3, 4, 4, 8), dim=-1).requires_grad_()
        e_k = F.normalize(torch.randn(2, 3, 4, 4, 8), dim=-1).requires_grad_()
        corr, depth = gasp_losses(e_q, e_k, pair_targets(sample, 10, (4, 4)), fast=fast)
        loss = total_loss(torch.tensor(1.0), corr, depth)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(e_q.grad).all() and torch.isfinite(e_k.grad).all()
    assert depth.sum().item() == 0.0


def test_pairs_put_the_later_frame_first():
    assert frame_pairs(4, anchor=2).tolist() == [[2, 0], [2, 1], [3, 2]]


def test_total_loss_is_lm_plus_weighted_layer_means():
    got = total_loss(torch.tensor(1.0), torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]), 0.3, 1.0)
    assert math.isclose(got.item(), 1.0 + 0.3 * 2.0 + 0.5, rel_tol=1e-6)


@pytest.mark.parametrize("fast", [False, True])
def test_losses_on_the_anchor_split_equal_losses_on_all_frames(fast):
    sample = _sample(Fr=4)
    sample["anchor"] = 2
    e_q, e_k = F.normalize(torch.randn(2, 4, 4, 4, 8), dim=-1), F.normalize(torch.randn(2, 4, 4, 4, 8), dim=-1)
    t = pair_targets(sample, 10, (4, 4))
    full = gasp_losses(e_q, e_k, t, fast=fast)
    split = gasp_losses(e_q[:, 2:], e_k[:, :3], t, q_offset=2, fast=fast)  # what GASP(anchor=2) returns
    for a, b in zip(full, split):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fast", [False, True])
def test_attention_loss_is_minus_log_of_the_probes_attention_at_the_match(fast):
    """L_attn = mean over valid tracks of -log P(token holding the match), P = the mean over query heads of
    softmax(q·k / sqrt(d)) over the target frame's tokens, q read bilinearly at the track (G3), keys shared by
    GQA groups (2 query heads a key). Tracks anywhere inside their tokens, some beyond the edge centres."""
    h, w, px, d, H, Fr, N, anchor = 3, 4, 10, 8, 4, 3, 6, 1
    g = torch.Generator().manual_seed(0)
    tracks = torch.rand(Fr, N, 2, generator=g) * torch.tensor([w * px, h * px])  # (F, N, 2) px
    tok = (tracks // px).long()  # (F, N, 2) the token (x, y) holding each track
    visible = torch.rand(Fr, N, generator=g) > 0.2
    sample = {"tracks": tracks, "visible": visible, "track_depth": torch.ones(Fr, N),
              "depth": torch.ones(Fr, h * px, w * px), "anchor": anchor}
    t = pair_targets(sample, px, (h, w), with_depth=False)
    q = torch.randn(H, (Fr - anchor) * h * w, d, generator=g)  # frames anchor..F-1
    k = torch.randn(H // 2, (anchor + 1) * h * w, d, generator=g)  # frames 0..anchor, 2 KV heads

    def read(grid, u, v):  # (H, h, w, d) at pixel (u, v): bilinear between token centres, border
        x, y = min(max(u / px - 0.5, 0), w - 1), min(max(v / px - 0.5, 0), h - 1)
        x0, y0 = min(int(x), w - 2), min(int(y), h - 2)
        fx, fy = x - x0, y - y0
        return ((1 - fx) * (1 - fy) * grid[:, y0, x0] + fx * (1 - fy) * grid[:, y0, x0 + 1]
                + (1 - fx) * fy * grid[:, y0 + 1, x0] + fx * fy * grid[:, y0 + 1, x0 + 1])

    nll = []
    for a, b in zip(t["a"].tolist(), t["b"].tolist()):
        qa = q[:, (a - anchor) * h * w:(a - anchor + 1) * h * w].view(H, h, w, d)
        kb = k[:, b * h * w:(b + 1) * h * w].repeat_interleave(2, 0)  # (H, T, d)
        for i in range(N):
            if visible[a, i] and visible[b, i]:
                qi = read(qa, *tracks[a, i].tolist())  # (H, d)
                P = torch.softmax(torch.einsum("hd,htd->ht", qi, kb) / math.sqrt(d), -1).mean(0)  # (T,)
                nll.append(-torch.log(P[tok[b, i, 1] * w + tok[b, i, 0]]))
    got = attention_loss(q, k, t, (h, w), q_offset=anchor, fast=fast)
    torch.testing.assert_close(got, torch.stack(nll).mean()[None])
