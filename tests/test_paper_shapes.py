"""The paper's layer shapes: 2-layer random-init models with Qwen2.5-VL-7B's text dimensions (d 3584, 28 heads,
4 KV heads, d_ff 18944, head 128, M-RoPE sections [16, 24, 24], θ 1e6) and with Vicuna-7B's (d 4096, 32 heads,
d_ff 11008) inside LLaVA-NeXT-Video, weights in bf16, r = 256, LoRA 128. The layers are full size; the frames
are few and small (3 frames of 4x4 tokens) so each test fits CI's 2 cores and 24 GB in well under a minute.
The shapes come from bench.py (one definition).

Run: python -m pytest -q tests/test_paper_shapes.py  (marked slow: ~1 GB of weights per model, SVD of 2 q_proj)
"""

import copy
from functools import partial

import numpy as np
import pytest
import torch
import transformers

import model as M
from bench import QWEN_7B, VICUNA_7B, build_paper
from losses import gasp_losses, pair_targets, total_loss

pytestmark = pytest.mark.slow

SHAPES = {"qwen2_5_vl": QWEN_7B, "llava_next_video": VICUNA_7B}
SIZE, FRAMES, ANCHOR = 112, 3, 1  # 112 px = 4x4 tokens of 28 px in both families


@pytest.fixture(scope="module", params=list(SHAPES))
def paper(request):
    """(kind, stock bf16 model with eager attention, Processor); the tests change copies only."""
    kind = request.param
    spec = dict(kind=kind, model=dict(layers=2, **SHAPES[kind]), device="cpu", dtype=torch.bfloat16,
                attn="eager")  # eager: output_attentions gives the probabilities
    if kind == "llava_next_video":
        spec["vision"] = dict(image_size=SIZE)  # CLIP 112 px: 8x8 patches, pooled by 2 -> 4x4 tokens
    torch.manual_seed(0)
    vlm, tokenizer = build_paper(spec)
    proc = M.Processor(vlm.config, tokenizer, (SIZE, SIZE))
    assert proc.grid == (4, 4)
    tc = M.text_config(vlm)
    want = SHAPES[kind]
    assert (tc.hidden_size, tc.num_attention_heads, tc.num_key_value_heads, tc.intermediate_size, M.head_size(tc)) == \
        (want["hidden"], want["heads"], want["kv_heads"], want["intermediate"], want["head_dim"])
    if kind == "qwen2_5_vl":
        assert tc.rope_parameters["mrope_section"] == [16, 24, 24] and tc.rope_parameters["rope_theta"] == 1e6
    return kind, vlm.eval(), proc


def _inputs(proc, answer="yes", seed=0):
    frames = np.random.default_rng(seed).integers(0, 255, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    inp = proc([frames], [M.PROMPT], None if answer is None else [answer])
    return inp, proc.token_map(inp["input_ids"][0], FRAMES)


def _targets(proc, n=20):
    """pair_targets of a hand-made sample: n tracks visible everywhere, depth 1-2 in every pixel."""
    g = torch.Generator().manual_seed(1)
    px, (h, w) = proc.token_px, proc.grid
    sample = {"tracks": torch.rand(FRAMES, n, 2, generator=g) * px * w,
              "visible": torch.ones(FRAMES, n, dtype=torch.bool), "track_depth": torch.rand(FRAMES, n, generator=g) + 1,
              "depth": torch.rand(FRAMES, h * px, w * px, generator=g) + 1, "anchor": ANCHOR}
    return pair_targets(sample, px, proc.grid)


@pytest.fixture(scope="module")
def stepped(paper):
    """One GASP step in bf16 autocast on a copy of the stock model: (GASP model, L_LM, L_corr, L_depth).
    Shared by the step and the export test (GASP's SVD init of two 7B-sized q_proj is the slow part)."""
    kind, stock, proc = paper
    vlm = copy.deepcopy(stock).train()  # get_peft_model injects LoRA in place: never into the fixture's model
    gasp = M.GASP(M.freeze_and_lora(vlm, lora_rank=128), r=256)
    inp, tmap = _inputs(proc)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, corr, depth = gasp(inp, tmap, ANCHOR, loss=partial(gasp_losses, targets=_targets(proc), tau=0.07,
                                                                q_offset=ANCHOR))
        loss = total_loss(out.loss, corr, depth, lambda_c=0.3, lambda_d=1.0)
    loss.backward()
    return gasp, out.loss.detach(), corr.detach(), depth.detach()


def test_one_gasp_step_in_bf16_autocast(stepped):
    """Finite L_LM, L_corr and L_depth on every layer; non-zero gradients on every head and on the LoRA of every
    layer's q_proj / k_proj (where the heads read); frozen bf16 weights get none; LoRA and heads stay float32."""
    gasp, lm, corr, depth = stepped
    assert corr.shape == depth.shape == (2,)
    assert torch.isfinite(torch.cat([lm.view(1), corr, depth])).all() and (corr > 0).all() and (depth > 0).all()
    for j in range(2):
        assert gasp.heads.w1.grad[j].abs().sum() > 0 and gasp.heads.w2.grad[j].abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in gasp.heads.parameters())
    lora = {n: p for n, p in gasp.vlm.named_parameters() if "lora_B" in n}
    assert len(lora) == 2 * 7  # q, k, v, o, gate, up, down in both layers
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in lora.values())
    for i in range(2):
        for proj in ("q_proj", "k_proj"):
            (grad,) = [p.grad for n, p in lora.items() if f"layers.{i}.self_attn.{proj}" in n]
            assert grad.abs().sum() > 0, f"layer {i} {proj}: no LoRA gradient"
    frozen = [p for n, p in gasp.vlm.named_parameters() if "lora_" not in n]
    assert all(p.dtype == torch.bfloat16 and p.grad is None for p in frozen)
    assert gasp.heads.w1.dtype == torch.float32


def test_native_qk_is_the_eager_attention(paper):
    """model.native_qk's q and k (M-RoPE / rotary applied, GQA keys repeated): softmax(q kᵀ / √128) of the anchor
    frame's tokens over frame 0's tokens equals the eager attention's probabilities (output_attentions) restricted
    to those keys and renormalised, every head of both layers (bf16 rounding apart)."""
    kind, vlm, proc = paper
    inp, tmap = _inputs(proc, answer=None)
    got = {}
    with torch.no_grad():
        M.native_qk(vlm, inp, tmap, lambda l, q, k: got.__setitem__(l, (q, k)))
        attn = vlm(**inp, output_attentions=True).attentions
    H = SHAPES[kind]["heads"]
    assert sorted(got) == [0, 1]
    a, b = ANCHOR, 0
    for l, (q, k) in got.items():
        assert q.shape == k.shape == (FRAMES, 16, H, 128)
        ours = torch.softmax(torch.einsum("thd,shd->hts", q[a], k[b]) / 128**0.5, -1)  # (H, T, T)
        theirs = attn[l][0][:, tmap[a].flatten()][:, :, tmap[b].flatten()].float()
        theirs = theirs / theirs.sum(-1, keepdim=True)
        assert ours.max() > 3 / 16  # the probabilities are far from uniform, so the match is not trivial
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=3e-2)


def test_export_round_trips_in_bf16(paper, stepped, tmp_path):
    """model.export after the step: heads dropped, LoRA merged; the stock class reloads it in bf16 with the stock
    parameter set, and its logits equal those of the merged model (and, up to bf16 merge rounding, of the LoRA
    model). Runs last on `stepped`: the export merges the LoRA into that model."""
    kind, stock, proc = paper
    gasp = stepped[0]
    with torch.no_grad():  # a trained-looking LoRA, so that the merge changes the weights
        for n, p in gasp.vlm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-2, generator=torch.Generator().manual_seed(len(n)))
    inp, _ = _inputs(proc, answer=None)
    gasp.eval()
    with torch.no_grad():
        lora_logits = gasp.vlm(**inp).logits
        stock_logits = stock(**inp).logits
    M.export(gasp, proc, str(tmp_path))
    merged = gasp.vlm.get_base_model()  # the LoRA model, merged in place by the export
    back = transformers.AutoModelForImageTextToText.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert type(back) is type(stock) is type(merged)
    assert {p.dtype for p in back.parameters()} == {torch.bfloat16}
    assert sorted(back.state_dict()) == sorted(stock.state_dict())  # no lora_*, no heads
    with torch.no_grad():
        logits = back(**inp).logits
        assert torch.equal(logits, merged(**inp).logits)
    torch.testing.assert_close(logits.float(), lora_logits.float(), atol=0.1, rtol=0.05)
    assert (logits.float() - stock_logits.float()).abs().max() > 0.1  # the LoRA delta was exported
