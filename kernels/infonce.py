"""Fast path for G3 and G4 (the plain code is losses.bilinear and losses.info_nce; losses.gasp_losses(fast=True)).

    G3  e_i^f   = normalize(bilinear(E^f, p_i^f / token_px - 0.5))
    G4  L_corr  = -(1/N) Σ_i log( exp(<e_i^a, e_i^b>/τ) / Σ_{k∈C_i} exp(<e_i^a, e_k^b>/τ) )

Same values and gradients as the plain code (tests/test_heads_losses.py holds them equal, float32 and bf16
autocast), by three changes that matter on CPU:
  - bilinear: G3's read as a (B, N, T) matrix of each point's 4 corner weights times the tokens; a matmul and
    its backward cost half of grid_sample's backward scatter. The matrix (5.5 MB at the paper's 15 pairs,
    640 tracks, 144 tokens) lives as long as one layer's loss.
  - unit: the normalisation and 1/τ in one multiply (F.normalize's division then a scale cost twice as much
    with their backward).
  - PairNLL: G4's -log softmax as one autograd function that keeps only the logsumexp (B, N) and recomputes the
    (N, N) logits in backward, a chunk of pairs at a time (as flash attention): the logits of a chunk stay under
    PAIR_CHUNK_BYTES (32 MB: at the paper's N = 640, 20 pairs in float32, 13 under bf16 autocast, where each
    float32 logit also has a bf16 copy). The C_i mask enters the logits' matmul as its bias.

Run: no entry point; tests are `python -m pytest tests/test_heads_losses.py -q`.
References: FlashAttention's recomputation (Dao et al., arXiv 2205.14135).
"""

import torch

# Notation: B batched maps (frame pairs), T = h*w tokens, N points, r embedding size, c pairs in a chunk.

PAIR_CHUNK_BYTES = 32 * 2**20  # PairNLL's bound on one chunk's (c, N, N) logits (float32 + their matmul-dtype copy)
_OFF = 1e30  # logit given to k ∉ C_i through the matmul's bias (masked_fill with a bool mask costs 5x more on CPU)
_EXP_FLOOR = -40.0  # softmax exponents are clamped here: exp(-40) = 4e-18 is 0 next to the row max's exp(0) = 1 at
#                     float32 precision (N * 4e-18 << 6e-8), while exp below -87 (denormal or zero results: -1e30, -inf)
#                     and matmuls on denormals are 10-50x slower on CPU


def corner_weights(xy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear weights of points xy (B, N, 2) (grid coordinates, align_corners=True) over the h x w tokens
    -> (B, N, T) float32, 4 non-zero weights a row summing to 1. Points beyond the edge token centres take the
    edge tokens."""
    x = ((xy[..., 0].float() + 1) / 2 * (w - 1)).clamp(0, w - 1)  # (B, N) token units, token j's centre at j
    y = ((xy[..., 1].float() + 1) / 2 * (h - 1)).clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)  # on the last centre x1 = x0, weight x - x0 = 0
    weights = torch.zeros(*x.shape, h * w, device=x.device)  # (B, N, T)
    for yi, xi, wi in ((y0, x0, (x0 + 1 - x) * (y0 + 1 - y)), (y0, x1, (x - x0) * (y0 + 1 - y)),
                       (y1, x0, (x0 + 1 - x) * (y - y0)), (y1, x1, (x - x0) * (y - y0))):
        weights.scatter_add_(-1, (yi * w + xi).long()[..., None], wi[..., None])
    return weights


def bilinear(tokens: torch.Tensor, xy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """losses.bilinear as a matmul: tokens (..., B, T, C) read at xy (B, N, 2) -> (..., B, N, C), in the tokens'
    dtype (float32 heads: float32 under autocast too, as grid_sample)."""
    with torch.autocast(tokens.device.type, enabled=False):
        return corner_weights(xy, h, w).to(tokens.dtype) @ tokens


def unit(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * F.normalize(x, dim=-1) for x (..., r) in one multiply: x * (scale / max(||x||, 1e-12))."""
    return x * (scale / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12))


def points(tokens: torch.Tensor, xy: torch.Tensor, h: int, w: int, scale: float = 1.0) -> torch.Tensor:
    """G3 times scale: scale * normalize(bilinear(tokens, xy)), tokens (..., B, T, r) read at xy (B, N, 2)
    -> (..., B, N, r)."""
    return unit(bilinear(tokens, xy, h, w), scale)


def _wide(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _masked_logits(a: torch.Tensor, b: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """a (c, N, r), b (c, N, r) in the matmul dtype, cand (c, N, N) -> (c, N, N) <a_i, b_k> for k ∈ C_i,
    -1e30 elsewhere, in float32 (float64 for float64 inputs). The mask enters the matmul as its bias."""
    off = cand.view(torch.uint8).to(a.dtype).sub_(1)  # (c, N, N): 0 on C_i, -1 off it
    return off.baddbmm_(a, b.mT, beta=_OFF).to(_wide(a))  # _OFF * off + a bᵀ


class PairNLL(torch.autograd.Function):
    """G4's -log softmax of the positive over C_i for B frame pairs. ea (B, N, r) anchor points already
    divided by τ, eb (B, N, r) target points, cand (B, N, N) C_i as a mask that holds the diagonal (the
    positive; losses.candidates gives it) -> nll (B, N) = logsumexp_k∈C_i <ea_i, eb_k> - <ea_i, eb_i>.
    Memory: pairs go through in chunks of c whose (c, N, N) logits stay under chunk_bytes; only the
    logsumexp (B, N) is kept, the logits are recomputed in backward.
    Precision: the matmuls run in the dtype autocast gives them at forward (bf16 under bf16 autocast, else
    float32), in backward too whatever the autocast state then, so backward differentiates the forward
    that ran; the logsumexp, the softmax and the gradient sums are float32."""

    @staticmethod
    def forward(ctx, ea, eb, cand, chunk_bytes=PAIR_CHUNK_BYTES):
        dev, acc = ea.device.type, _wide(ea)  # acc: float32 (float64 for float64 inputs)
        mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) and acc == torch.float32 else acc
        B, N, _ = ea.shape
        extra = 0 if mm == acc else mm.itemsize  # the matmul's own output, before its float32 copy
        ctx.mm, ctx.c = mm, max(1, chunk_bytes // (N * N * (acc.itemsize + extra)))  # pairs per chunk
        lse, pos = (torch.empty(B, N, dtype=acc, device=ea.device) for _ in range(2))
        with torch.autocast(dev, enabled=False):
            a, b = ea.to(mm), eb.to(mm)
            for s in range(0, B, ctx.c):
                p = slice(s, s + ctx.c)
                S = _masked_logits(a[p], b[p], cand[p])  # (c, N, N)
                pos[p] = S.diagonal(dim1=1, dim2=2)  # <ea_i, eb_i>
                m = S.amax(-1, keepdim=True)  # (c, N, 1): finite, the diagonal is in C_i
                lse[p] = S.sub_(m).clamp_(min=_EXP_FLOOR).exp_().sum(-1).log_().add_(m[..., 0])  # logsumexp in place
        ctx.save_for_backward(ea, eb, cand, lse)
        return lse - pos

    @staticmethod
    def backward(ctx, g):  # d/d ea_i = g_i (Σ_k A_ik eb_k - eb_i); d/d eb_k = Σ_i g_i A_ik ea_i - g_k ea_k
        ea, eb, cand, lse = ctx.saved_tensors
        with torch.autocast(ea.device.type, enabled=False):
            a, b, g = ea.to(ctx.mm), eb.to(ctx.mm), g.to(lse.dtype)
            ga, gb = -g[..., None] * b.to(lse.dtype), -g[..., None] * a.to(lse.dtype)  # (B, N, r)
            for s in range(0, len(a), ctx.c):
                p = slice(s, s + ctx.c)
                A = _masked_logits(a[p], b[p], cand[p]).sub_(lse[p, :, None]).clamp_(min=_EXP_FLOOR).exp_()  # A_ik
                A = A.to(ctx.mm)  # (c, N, N); g_i is applied on the (N, r) sides, off the N x N one
                ga[p] += g[p, :, None] * torch.bmm(A, b[p])
                gb[p] += torch.bmm(A.mT, (g[p, :, None] * a[p]).to(ctx.mm))
        return ga.to(ea.dtype), gb.to(eb.dtype), None, None


def pair_nll(ea: torch.Tensor, eb: torch.Tensor, cand: torch.Tensor, chunk_bytes: int = PAIR_CHUNK_BYTES
             ) -> torch.Tensor:
    """G4's per-track -log softmax for every layer: ea (L, P, N, r) anchor points already divided by τ,
    eb (L, P, N, r), cand (P, N, N) -> (L, P, N), PairNLL one layer at a time."""
    return torch.stack([PairNLL.apply(ea[l], eb[l], cand, chunk_bytes) for l in range(len(ea))])
