"""The per-layer correspondence head of GASP and its SVD initialisation (G1-G2 below).

One small head per supervised LLM layer embeds the visual tokens of that layer into a
low-dimensional, L2-normalised correspondence space. All heads are stored as stacked
weights; forward() runs any slice of them in one batched matmul (model.GASP runs one layer
at a time, inside that layer's forward).

    G1   e = normalize(W2 · GELU(W1 · v + b1) + b2),   W1: (2r, d_in), W2: (r, 2r)
    G2   W_q = U Σ Vᵀ (that layer's q_proj.weight):  W1 ← U[:, :2r]ᵀ, b1 ← 0, W2 ← [I_r | 0], b2 ← 0

`head_input="qk"` (default): v is the layer's own pre-rotary query (anchor side) or key
(target side, repeated over query heads for GQA), after q_norm / k_norm where the family has them, so the loss shapes exactly the Q–K
matching the LLM attends with. `head_input="hidden"`: v is x_l, the normed input of the
layer's attention, and W1 ← (Σ Vᵀ)[:2r] / σ_max (the same projection, read from x_l).

The heads are training-only: model.export() drops them, so inference costs nothing.

Run: this file has no entry point; its tests are `python -m pytest tests/test_heads_losses.py -q`.
References: GASP, arXiv 2605.30231 (§3 "Correspondence head").
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# Notation: L supervised layers, T tokens, d_in head input size, r embedding size;
# H / H_kv attention heads (query / key), attn_dim the attention head size.


class CorrespondenceHeads(nn.Module):
    """L independent 2-layer MLP heads, stored stacked: forward((L, T, d_in)) -> (L, T, r)."""

    def __init__(self, num_layers: int, d_in: int, r: int = 256):
        super().__init__()
        self.r = r
        self.w1 = nn.Parameter(torch.empty(num_layers, 2 * r, d_in))  # (L, 2r, d_in)
        self.b1 = nn.Parameter(torch.zeros(num_layers, 2 * r))
        self.w2 = nn.Parameter(torch.empty(num_layers, r, 2 * r))  # (L, r, 2r)
        self.b2 = nn.Parameter(torch.zeros(num_layers, r))
        nn.init.normal_(self.w1, std=d_in**-0.5)
        nn.init.normal_(self.w2, std=(2 * r) ** -0.5)

    def forward(self, v: torch.Tensor, layers: slice = slice(None), attn_dim: int = 0) -> torch.Tensor:
        """v (L', T, d_in) for the L' heads in `layers` -> (L', T, r). GQA keys may come unrepeated,
        (L', T, H_kv * attn_dim) with the attention head size attn_dim given: W1 is folded onto them (fold_kv), the
        same result as on repeat_kv(k) for H / H_kv times fewer multiply-adds. v may be in the LLM's dtype: under
        autocast the matmuls take it as it comes (no float32 copy of a bf16 capture); without, it is cast to the
        heads' dtype."""
        if not torch.is_autocast_enabled(v.device.type):
            v = v.to(self.w1.dtype)
        w1 = self.w1[layers]
        if v.shape[-1] != w1.shape[-1]:
            w1 = fold_kv(w1, v.shape[-1] // attn_dim, attn_dim)
        # G1: e = normalize(W2 · GELU(W1 · v + b1) + b2), the sliced layers in one batched matmul.
        h = F.gelu(torch.baddbmm(self.b1[layers, None], v, w1.transpose(1, 2)))  # (L', T, 2r)
        e = torch.baddbmm(self.b2[layers, None], h, self.w2[layers].transpose(1, 2))  # (L', T, r)
        return F.normalize(e, dim=-1)

    @torch.no_grad()
    def init_from_query_projections(self, q_weights: list[torch.Tensor], head_input: str = "qk"):
        """G2: initialise head l from the SVD of layer l's q_proj weight (d_q, d).

        Assumption: the paper only says "initialized via SVD decomposition of the pre-trained
        query projection weights"; the exact mapping below (G2 in the module docstring) is our reconstruction.
        When 2r exceeds the rank, the remaining rows of W1 stay zero.
        """
        r2 = 2 * self.r
        for l, w_q in enumerate(q_weights):
            U, S, Vh = torch.linalg.svd(w_q.detach().float(), full_matrices=False)  # U (d_q, k), S (k,), Vh (k, d)
            k = min(r2, S.numel())
            if head_input == "qk":
                w1 = U[:, :k].T  # (k, d_q): coordinates of q on its top left singular vectors
            elif head_input == "hidden":
                w1 = (S[:k, None] * Vh[:k]) / S[0]  # (k, d): Σ Vᵀ x_l, unit spectral norm
            else:
                raise ValueError(f"head_input must be 'qk' or 'hidden', got {head_input!r}")
            self.w1[l].zero_()
            self.w1[l, :k] = w1.to(self.w1.dtype)
            self.w2[l].zero_()
            self.w2[l, :, : self.r].copy_(torch.eye(self.r))  # W2 ← [I_r | 0]
        self.b1.zero_()
        self.b2.zero_()


def fold_kv(w: torch.Tensor, num_kv_heads: int, attn_dim: int) -> torch.Tensor:
    """A map read from repeat_kv(k) -> the same map read from k: w (..., H * attn_dim) -> (..., H_kv * attn_dim),
    summing the columns of the query heads that share a key head (GQA)."""
    n_rep = w.shape[-1] // (num_kv_heads * attn_dim)
    return w.unflatten(-1, (num_kv_heads, n_rep, attn_dim)).sum(-2).flatten(-2)


def repeat_kv(k: torch.Tensor, num_heads: int, attn_dim: int) -> torch.Tensor:
    """(..., H_kv * attn_dim) -> (..., H * attn_dim): key head g serves query heads g*n .. g*n + n - 1 (GQA)."""
    h_kv = k.shape[-1] // attn_dim
    if h_kv == num_heads:
        return k
    k = k.unflatten(-1, (h_kv, 1, attn_dim))  # (..., H_kv, 1, attn_dim)
    return k.expand(*k.shape[:-2], num_heads // h_kv, attn_dim).flatten(-3)
