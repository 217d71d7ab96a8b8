"""GASP losses: InfoNCE on ground-truth correspondences, soft-argmax depth consistency,
deep supervision over layers and the total objective (G3-G7 below).

    G3  e_i^f   = normalize(bilinear(E^f, p_i^f / token_px - 0.5))       point embedding from the token grid
    G4  L_corr  = -(1/N) Σ_i log( exp(<e_i^a, e_i^b>/τ) / Σ_{k∈C_i} exp(<e_i^a, e_k^b>/τ) )
                  C_i = {i} ∪ {k : ||p_k^b - p_i^b|| > 1 token}
    G5  A_ij    = softmax_j(<e_i^a, t_j^b>/τ) over all tokens j of frame b,  d̂_i = Σ_j A_ij D_j^b
        L_depth = (1/N) Σ_i |d_i - d̂_i| / (d_i + d̂_i + ε),   D_j^b = median valid depth in token j
    G6  L̄ = mean over supervised layers
    G7  L = L_LM + λ_c L̄_corr + λ_d L̄_depth

In a pair (a, b) the anchor a is the later frame (q-side embeddings), b the earlier frame
(k-side embeddings): the direction causal attention reads, the one the probe (G8) measures.
Pairs are (sample anchor, every other frame), ordered in time.

The plain code below is the primary path, written as the equations read. gasp_losses(fast=True) (the default,
the one train.py runs) swaps G3-G4 for kernels/infonce.py, an optional fast path the tests hold equal to it.

Memory: model.GASP.forward calls gasp_losses one layer at a time under a checkpoint. The plain G4 keeps the
(P, N, N) logits of every pair and their softmax for backward; the fast path keeps only a logsumexp per track
and recomputes the logits, a chunk of pairs under 32 MB at a time.

At the end of the file, attention_loss: an extension, not in the paper (train.py --lambda-attn).

Run: no entry point; tests are `python -m pytest tests/test_heads_losses.py -q`.
References: GASP arXiv 2605.30231 §3; InfoNCE (van den Oord et al., arXiv 1807.03748);
soft-argmax as in RAFT (Teed & Deng, arXiv 2003.12039).
"""

import math

import torch
import torch.nn.functional as F

from kernels import infonce

# Notation: L layers, F frames, (h, w) token grid, T = h*w tokens, N tracks, P frame pairs, r embedding size.


def frame_pairs(num_frames: int, anchor: int) -> torch.Tensor:
    """(P, 2) pairs (a, b), a later than b in the sample: the anchor frame with every other frame.
    Assumption: the later frame gives the q side and the earlier the k side (the direction causal attention
    reads, which the probe measures); the paper names an anchor frame but no direction."""
    others = [f for f in range(num_frames) if f != anchor]
    return torch.tensor([(max(anchor, f), min(anchor, f)) for f in others], dtype=torch.long).view(-1, 2)


def grid_coords(uv: torch.Tensor, h: int, w: int, token_px: float) -> torch.Tensor:
    """Pixels (..., 2) (x, y) -> grid_sample coordinates (..., 2) on an h x w token grid.
    Token j covers pixels [j*token_px, (j+1)*token_px); its centre sits at token coordinate j,
    and align_corners=True puts -1 / +1 on the centres of the first / last token."""
    x, y = uv[..., 0] / token_px - 0.5, uv[..., 1] / token_px - 0.5
    return torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)


def token_units(xy: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """grid_coords inverted: grid coordinates (..., 2) -> x (...), y (...) in token units, token j's centre at j."""
    return (xy[..., 0].float() + 1) / 2 * (w - 1), (xy[..., 1].float() + 1) / 2 * (h - 1)


def bilinear(tokens: torch.Tensor, xy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """G3's bilinear(E^f, ·): tokens (..., B, T, C) of an h x w grid (T = h*w) read at xy (B, N, 2) grid
    coordinates -> (..., B, N, C). Points beyond the edge token centres take the edge tokens. Read in float32
    (bf16 grid coordinates would miss by up to 1/8 token on a 64-token side), returned in the tokens' dtype."""
    *lead, B, T, C = tokens.shape
    maps = tokens.float().reshape(-1, h, w, C).permute(0, 3, 1, 2)  # (K B, C, h, w), K = prod(lead)
    grid = xy.float().expand(*lead, *xy.shape).reshape(-1, 1, xy.shape[-2], 2)  # (K B, 1, N, 2)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (K B, C, 1, N)
    return out[:, :, 0].mT.reshape(*lead, B, -1, C).to(tokens.dtype)


def candidates(uv_b: torch.Tensor, valid: torch.Tensor, token_px: float) -> torch.Tensor:
    """G4's C_i = {i} ∪ {k : ||p_k^b - p_i^b|| > 1 token}, over valid tracks: uv_b (P, N, 2) target
    pixels, valid (P, N) -> (P, N, N) mask. The diagonal always stays, so every row has a finite
    logit and no NaN reaches the gradient.
    Assumption: the near-positive mask (tracks within a token are not negatives) is ours.
    Assumption: negatives come from the target frame only. Two digests of the paper say negatives are drawn
    from all frames except the anchor; that variant is left out (it needs every frame's k side per pair)."""
    far = torch.cdist(uv_b.float(), uv_b.float()) > token_px  # (P, N, N) more than a token apart
    both = valid[:, :, None] & valid[:, None, :]  # (P, N, N) i and k both valid: an invalid track is no negative
    eye = torch.eye(uv_b.shape[1], dtype=torch.bool, device=uv_b.device)  # the positive always stays
    return far & both | eye


def info_nce(ea: torch.Tensor, eb: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """G4 per layer. ea (L, P, N, r) anchor point embeddings, already divided by τ; eb (L, P, N, r)
    target point embeddings; cand (P, N, N) C_i as a mask (candidates()); valid (P, N) track visible
    in both frames. Returns (L,); 0 when nothing is valid."""
    logits = (ea @ eb.mT).float()  # (L, P, N, N) <e_i^a, e_k^b>/τ; the softmax in float32 under autocast too
    logits = logits.masked_fill(~cand, -torch.inf)  # k ∈ C_i only
    nll = -logits.log_softmax(-1).diagonal(dim1=-2, dim2=-1)  # (L, P, N) -log softmax at the positive k = i
    return masked_mean(nll, valid)


def token_depth(depth: torch.Tensor, token_px: int) -> torch.Tensor:
    """D_j: median of the valid (> 0, finite) depth inside each token. depth (F, H, W) -> (F, h, w), 0 = none valid."""
    if not float(token_px).is_integer():
        raise ValueError(f"token_px {token_px}: token depth needs whole pixels per token (model.frame_size gives them)")
    Fr, H, W, token_px = *depth.shape, int(token_px)
    h, w = H // token_px, W // token_px
    cells = depth[:, : h * token_px, : w * token_px].reshape(Fr, h, token_px, w, token_px)
    cells = cells.permute(0, 1, 3, 2, 4).reshape(Fr, h, w, token_px * token_px)  # (F, h, w, px²)
    cells = torch.where((cells > 0) & (cells < torch.inf), cells, torch.nan)  # invalid: <= 0, nan, ±inf
    return cells.nanmedian(dim=-1).values.nan_to_num(0.0)  # the lower median, as torch.median


def depth_loss(S: torch.Tensor, Db: torch.Tensor, d: torch.Tensor, valid: torch.Tensor,
               eps: float = 1e-6) -> torch.Tensor:
    """G5 per layer. S (L, P, N, T) = <e_i^a, t_j^b>/τ over all tokens j of the target frames;
    Db (P, T) token depths (0 = invalid); d (P, N) track depth in frame b; valid (P, N).
    Returns (L,); 0 when nothing is valid."""
    tok_ok = Db > 0  # (P, T)
    any_ok = tok_ok.any(-1, keepdim=True)  # (P, 1)
    # Assumption: tokens without valid depth are left out of the softmax (the paper is silent).
    # A frame with no valid token keeps its full softmax (finite, no NaN) and contributes nothing.
    valid = valid & (d > 0) & any_ok
    keep = tok_ok | ~any_ok  # (P, T) the tokens in the softmax
    off = torch.zeros(Db.shape, dtype=S.dtype, device=S.device).masked_fill_(~keep, -torch.inf)  # (P, T)
    A = torch.softmax(S + off[None, :, None, :], dim=-1)  # A_ij, the mask built once for all L and N
    d_hat = torch.einsum("lpnt,pt->lpn", A, Db.to(A.dtype))  # soft-argmax depth
    err = (d - d_hat).abs() / (d + d_hat + eps)  # (L, P, N)
    return masked_mean(err, valid)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (L, *mask.shape) over the True entries of mask -> (L,). Zero (with grad) if mask is empty."""
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.flatten(1).sum(1) / mask.sum().clamp(min=1)


def pair_targets(sample: dict, token_px: int, grid: tuple[int, int], with_depth: bool = True, device=None) -> dict:
    """What G3-G5 need from one sample, computed once (not per layer): the frame pairs (a, b), the
    tracks' grid coordinates in both frames of each pair, visibility, the C_i masks, depths.
    sample: the data contract (numpy or torch): tracks (F, N, 2), visible (F, N), track_depth (F, N),
    depth (F, H, W), anchor."""
    tracks, visible, track_depth, depth = (torch.as_tensor(sample[k], device=device)
                                           for k in ("tracks", "visible", "track_depth", "depth"))
    a, b = frame_pairs(tracks.shape[0], int(sample["anchor"])).to(tracks.device).unbind(1)  # (P,) later, earlier frame
    valid = visible[a] & visible[b]  # (P, N)
    D_b = None
    if with_depth:  # each target frame once: the anchor is the target of every later frame's pair
        frames, pair_frame = b.unique(return_inverse=True)  # (U,), (P,)
        D_b = token_depth(depth[frames], token_px).flatten(1)[pair_frame]  # (P, T)
    return dict(a=a, b=b, valid=valid, cand=candidates(tracks[b], valid, token_px),
                xy_a=grid_coords(tracks[a], *grid, token_px), xy_b=grid_coords(tracks[b], *grid, token_px),
                d_b=track_depth[b], D_b=D_b)


def gasp_losses(e_q: torch.Tensor, e_k: torch.Tensor, targets: dict, tau: float = 0.07,
                q_offset: int = 0, fast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """G3-G5 for one sample, every layer given.

    e_q (L, F_q, h, w, r), e_k (L, F_k, h, w, r): head embeddings of the visual tokens, q side and k side;
    e_q[:, i] is frame q_offset + i, e_k[:, i] is frame i (GASP.forward with anchor: q_offset = anchor).
    targets: pair_targets(sample). Returns per-layer L_corr (L,) and L_depth (L,) (zeros without depth targets).
    fast: G3-G4 by kernels/infonce.py (the same values and gradients, less time and memory on CPU); False: the
    plain code of this file.
    """
    L, _, h, w, r = e_q.shape
    P = len(targets["a"])
    ta = e_q[:, targets["a"] - q_offset].reshape(L, P, h * w, r)  # (L, P, T, r) anchor frames' tokens
    tb = e_k[:, targets["b"]].reshape(L, P, h * w, r)  # (L, P, T, r) target tokens t_j^b
    xy_a, xy_b, cand, valid = targets["xy_a"], targets["xy_b"], targets["cand"], targets["valid"]
    if not fast:
        ea = F.normalize(bilinear(ta, xy_a, h, w), dim=-1) / tau  # (L, P, N, r): G3; 1/τ here serves G4 and G5
        eb = F.normalize(bilinear(tb, xy_b, h, w), dim=-1)  # (L, P, N, r)
        corr = info_nce(ea, eb, cand, valid)  # G4
    else:  # the optional fast path, tested equal to the three lines above
        ea, eb = infonce.points(ta, xy_a, h, w, 1 / tau), infonce.points(tb, xy_b, h, w)
        corr = masked_mean(infonce.pair_nll(ea, eb, cand), valid)
    if targets["D_b"] is None:
        return corr, torch.zeros_like(corr)
    S = ea @ tb.transpose(2, 3)  # (L, P, N, T) <e_i^a, t_j^b>/τ
    return corr, depth_loss(S, targets["D_b"], targets["d_b"], valid)  # G5


def total_loss(lm: torch.Tensor, corr: torch.Tensor, depth: torch.Tensor,
               lambda_c: float = 0.3, lambda_d: float = 1.0) -> torch.Tensor:
    """G6 + G7: L = L_LM + λ_c mean_l L_corr^l + λ_d mean_l L_depth^l.
    Assumption: uniform mean over layers (a sum over 28-32 layers would swamp L_LM)."""
    return lm + lambda_c * corr.mean() + lambda_d * depth.mean()


def attention_loss(q: torch.Tensor, k: torch.Tensor, targets: dict, grid: tuple[int, int], q_offset: int = 0,
                   scale: float | None = None, fast: bool = True) -> torch.Tensor:
    """Extension, not in the paper (train.py --lambda-attn, 0 = off): the layer's own attention trained on the
    same tracks, the distribution the probe (G8) reads:
        P_ij   = mean_heads softmax_j(q_i · k_j · scale) over the tokens j of the target frame b, q_i the
                 post-rotary query bilinearly read at track i in the anchor frame a (G3 on q)
        L_attn = -(1/N) Σ_i log P_i,j(i),   j(i) = the token holding track i in frame b (the probe's ground truth)
    Assumption: the hard token target; bilinear weights over the 4 nearest tokens as a soft target cap a correct
    match's confidence by where the point falls in its token (measured: rho 0.22 at 0.97 PCK@2 with them).
    q (H, F_q T, attn_dim): the visual queries of frames q_offset.. as the attention receives them (rotary
    applied); k (H_kv, F_k T, attn_dim): the keys of frames 0..; scale: the attention's (default attn_dim^-1/2);
    fast: G3's read by kernels/infonce.py, as in gasp_losses. Returns (1,).
    Memory: (H, P, N, T) float32 logits a layer (155 MB at Qwen2.5-VL-7B's 28 heads, 15 pairs, 640 tracks,
    144 tokens)."""
    h, w = grid
    H, _, attn_dim = q.shape
    T, a, b = h * w, targets["a"] - q_offset, targets["b"]
    k = k.repeat_interleave(H // k.shape[0], dim=0)  # GQA: key head g serves query heads g*n .. g*n + n - 1
    read = infonce.bilinear if fast else bilinear
    qa = read(q.view(H, -1, T, attn_dim)[:, a], targets["xy_a"], h, w)  # (H, P, N, attn_dim)
    with torch.autocast(q.device.type, enabled=False):
        S = (qa.float() @ k.view(H, -1, T, attn_dim)[:, b].float().mT) * (scale or attn_dim ** -0.5)  # (H, P, N, T)
        logp = S.log_softmax(-1).logsumexp(0) - math.log(H)  # (P, N, T): log of the heads' mean softmax
    x, y = token_units(targets["xy_b"], h, w)  # (P, N)
    j = (y + 0.5).floor().clamp(0, h - 1) * w + (x + 0.5).floor().clamp(0, w - 1)  # (P, N) token holding the track
    nll = -logp.gather(-1, j.long()[..., None])[..., 0]  # (P, N)
    return masked_mean(nll[None], targets["valid"])
