"""GASP losses: InfoNCE on ground-truth correspondences, soft-argmax depth consistency,
deep supervision over layers and the total objective (DESIGN.md G3-G7).

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

Run: no entry point; tests are `python -m pytest tests/test_heads_losses.py -q`.
References: GASP arXiv 2605.30231 §3; InfoNCE (van den Oord et al., arXiv 1807.03748);
soft-argmax as in RAFT (Teed & Deng, arXiv 2003.12039).
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Notation: L layers, F frames, (h, w) token grid, T = h*w tokens, N tracks, P frame pairs, r embedding size.


def frame_pairs(num_frames: int, anchor: int) -> torch.Tensor:
    """(P, 2) pairs (a, b), a later than b in the sample: the anchor frame with every other frame."""
    others = [f for f in range(num_frames) if f != anchor]
    return torch.tensor([(max(anchor, f), min(anchor, f)) for f in others], dtype=torch.long).view(-1, 2)


def sample_points(emb: torch.Tensor, uv: torch.Tensor, token_px: float) -> torch.Tensor:
    """G3: bilinear sampling of token-grid embeddings at pixel positions, re-normalised.

    emb (L, F, h, w, r), uv (F, N, 2) pixels (x, y) -> (L, F, N, r).
    Token j covers pixels [j*token_px, (j+1)*token_px); its centre sits at token coordinate j.
    """
    L, Fr, h, w, r = emb.shape
    x = uv[..., 0] / token_px - 0.5  # (F, N) token coordinates
    y = uv[..., 1] / token_px - 0.5
    # align_corners=True maps -1 / +1 to the centres of the first / last token.
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)  # (F, N, 2)
    grid = grid.to(emb.dtype)[:, None]  # (F, 1, N, 2)
    maps = emb.permute(1, 0, 4, 2, 3).reshape(Fr, L * r, h, w)  # (F, L*r, h, w)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (F, L*r, 1, N)
    out = out[:, :, 0].view(Fr, L, r, -1).permute(1, 0, 3, 2)  # (L, F, N, r)
    return F.normalize(out, dim=-1)


def info_nce(ea: torch.Tensor, eb: torch.Tensor, uv_b: torch.Tensor, valid: torch.Tensor,
             token_px: float, tau: float) -> torch.Tensor:
    """G4 per layer. ea, eb (L, P, N, r) anchor / target point embeddings; uv_b (P, N, 2) target
    pixels; valid (P, N) track visible in both frames. Returns (L,); 0 when nothing is valid."""
    N = ea.shape[2]
    logits = torch.einsum("lpnr,lpmr->lpnm", ea / tau, eb)  # (L, P, N, N); 1/τ on the small side
    # C_i = {i} ∪ {k : ||p_k^b - p_i^b|| > 1 token}, over valid tracks only.
    # Assumption: the near-positive mask (tracks within a token are not negatives) is ours.
    dist = torch.cdist(uv_b.float(), uv_b.float()) / token_px  # (P, N, N) in tokens
    eye = torch.eye(dist.shape[-1], dtype=torch.bool, device=dist.device)
    # The diagonal always stays, so every row has a finite logit and no NaN reaches the gradient.
    cand = ((dist > 1) & valid[:, None, :] & valid[:, :, None]) | eye  # (P, N, N)
    logits = logits.masked_fill(~cand, float("-inf"))
    # -log softmax at the diagonal = logsumexp_k∈C_i - <e_i^a, e_i^b>/τ; fused, so only one (L, P, N, N) is kept.
    target = torch.arange(N, device=logits.device).repeat(logits.shape[0] * logits.shape[1])
    nll = F.cross_entropy(logits.flatten(0, 2), target, reduction="none").view(ea.shape[:3])  # (L, P, N)
    return masked_mean(nll, valid)


def token_depth(depth: torch.Tensor, token_px: int) -> torch.Tensor:
    """D_j: median of the valid (> 0, finite) depth inside each token. depth (F, H, W) -> (F, h, w), 0 = none valid."""
    Fr, H, W = depth.shape
    h, w = H // token_px, W // token_px
    cells = depth[:, : h * token_px, : w * token_px].reshape(Fr, h, token_px, w, token_px)
    cells = cells.permute(0, 1, 3, 2, 4).reshape(Fr, h, w, token_px * token_px)  # (F, h, w, px²)
    cells = torch.where(torch.isfinite(cells) & (cells > 0), cells, torch.nan)
    return cells.nanmedian(dim=-1).values.nan_to_num(0.0)


def depth_loss(ea: torch.Tensor, tb: torch.Tensor, Db: torch.Tensor, d: torch.Tensor,
               valid: torch.Tensor, tau: float, eps: float = 1e-6) -> torch.Tensor:
    """G5 per layer. ea (L, P, N, r) anchor point embeddings; tb (L, P, T, r) all token embeddings
    of the target frames; Db (P, T) token depths (0 = invalid); d (P, N) track depth in frame b;
    valid (P, N). Returns (L,); 0 when nothing is valid."""
    tok_ok = Db > 0  # (P, T)
    any_ok = tok_ok.any(-1, keepdim=True)  # (P, 1)
    # Assumption: tokens without valid depth are left out of the softmax (DESIGN.md G5 is silent).
    # A frame with no valid token keeps its full softmax (finite, no NaN) and contributes nothing.
    valid = valid & (d > 0) & any_ok
    logits = torch.einsum("lpnr,lptr->lpnt", ea / tau, tb)  # (L, P, N, T)
    logits = logits.masked_fill(~(tok_ok | ~any_ok)[None, :, None, :], float("-inf"))
    A = torch.softmax(logits, dim=-1)  # A_ij
    d_hat = torch.einsum("lpnt,pt->lpn", A, Db.to(A.dtype))  # soft-argmax depth
    err = (d - d_hat).abs() / (d + d_hat + eps)  # (L, P, N)
    return masked_mean(err, valid)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (L, *mask.shape) over the True entries of mask -> (L,). Zero (with grad) if mask is empty."""
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.flatten(1).sum(1) / mask.sum().clamp(min=1)


def gasp_losses(e_q: torch.Tensor, e_k: torch.Tensor, sample: dict, token_px: int, tau: float = 0.07,
                with_depth: bool = True, q_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """G3-G5 for one sample, every supervised layer.

    e_q (L, F_q, h, w, r), e_k (L, F_k, h, w, r): head embeddings of the visual tokens, q side and k side;
    e_q[:, i] is frame q_offset + i, e_k[:, i] is frame i (GASP.forward with anchor: q_offset = anchor).
    sample: the data contract (numpy or torch): tracks (F, N, 2), visible (F, N), track_depth (F, N),
    depth (F, H, W), anchor. Returns per-layer L_corr (L,) and L_depth (L,).
    """
    tracks, visible, track_depth, depth = (torch.as_tensor(sample[k], device=e_q.device)
                                           for k in ("tracks", "visible", "track_depth", "depth"))
    pairs = frame_pairs(tracks.shape[0], int(sample["anchor"])).to(e_q.device)  # (P, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    valid = visible[a] & visible[b]  # (P, N)
    Db = token_depth(depth[b], token_px).flatten(1) if with_depth else None  # (P, T)

    def layer(eq, ek):  # one layer: eq (1, F_q, h, w, r), ek (1, F_k, h, w, r)
        pq = sample_points(eq[:, a - q_offset], tracks[a], token_px)  # (1, P, N, r) anchor side
        pk = sample_points(ek[:, b], tracks[b], token_px)  # (1, P, N, r) target side
        corr = info_nce(pq, pk, tracks[b], valid, token_px, tau)
        if not with_depth:
            return corr, torch.zeros_like(corr)
        return corr, depth_loss(pq, ek[:, b].flatten(2, 3), Db, track_depth[b], valid, tau)

    # One layer at a time, recomputed in backward: only one layer's (P, N, N) logits live at once.
    grad = torch.is_grad_enabled() and (e_q.requires_grad or e_k.requires_grad)
    outs = [checkpoint(layer, e_q[l : l + 1], e_k[l : l + 1], use_reentrant=False) if grad
            else layer(e_q[l : l + 1], e_k[l : l + 1]) for l in range(e_q.shape[0])]
    return torch.cat([c for c, _ in outs]), torch.cat([d for _, d in outs])


def total_loss(lm: torch.Tensor, corr: torch.Tensor, depth: torch.Tensor,
               lambda_c: float = 0.3, lambda_d: float = 1.0) -> torch.Tensor:
    """G6 + G7: L = L_LM + λ_c mean_l L_corr^l + λ_d mean_l L_depth^l.
    Assumption: uniform mean over layers (a sum over 28-32 layers would swamp L_LM)."""
    return lm + lambda_c * corr.mean() + lambda_d * depth.mean()
