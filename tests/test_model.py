"""model.py on tiny random-init configs of the real classes: exact logits, token map, export, gradients."""

from functools import partial

import numpy as np
import pytest
import torch
import transformers

import model as M
from losses import gasp_losses, pair_targets, total_loss

KINDS = ["qwen2_5_vl", "qwen2_vl", "llava_next_video"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {k: M.build_tiny(str(root / k), k, heads=4, kv_heads=2) for k in KINDS}  # GQA, as the 7B models


def _inputs(proc, F=3, seed=0, answer="A"):
    frames = np.random.default_rng(seed).integers(0, 255, (F, *proc.size, 3), dtype=np.uint8)
    inp = proc([frames], ["Which point matches?"], None if answer is None else [answer])
    return frames, inp, proc.token_map(inp["input_ids"][0], F)


def _llm_input(vlm, inp):
    """The LLM's input embeddings (S, d), read with a pre-hook on its first layer."""
    got = {}

    def hook(module, args, kwargs):
        got["x"] = args[0] if args else kwargs["hidden_states"]

    h = M.llm_layers(vlm)[0].register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        vlm(**inp)
    h.remove()
    return got["x"][0]


@pytest.mark.parametrize("kind", KINDS)
def test_wrapped_logits_equal_stock_and_token_map(tiny, kind):
    vlm, proc = M.load(tiny[kind])
    frames, inp, tmap = _inputs(proc)
    with torch.no_grad():
        ref = vlm(**inp).logits
        out, e_q, e_k = M.GASP(vlm, r=16).embed(inp, tmap)
    assert torch.equal(out.logits, ref)
    assert e_q.shape == e_k.shape == (4, 3, *proc.grid, 16)
    # Change the pixels of one token's patch in frame 1: that token moves most, no other frame moves.
    f, (y, x) = 1, (2, 3)
    px = proc.token_px
    frames2 = frames.copy()
    frames2[f, y * px:(y + 1) * px, x * px:(x + 1) * px] = 255 - frames2[f, y * px:(y + 1) * px, x * px:(x + 1) * px]
    inp2 = proc([frames2], ["Which point matches?"], ["A"])
    delta = (_llm_input(vlm, inp2) - _llm_input(vlm, inp)).norm(dim=-1)  # (S,)
    per_frame = delta[tmap.flatten()].view(3, -1)
    assert per_frame[[0, 2]].max() == 0
    assert per_frame[f].argmax().item() == y * proc.grid[1] + x
    # and every non-visual position is untouched
    others = torch.ones_like(delta, dtype=torch.bool)
    others[tmap.flatten()] = False
    assert delta[others].max() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_native_qk_matches_the_attention_the_model_computes(tiny, kind):
    vlm = transformers.AutoModelForImageTextToText.from_pretrained(tiny[kind], attn_implementation="eager").eval()
    _, proc = M.load(tiny[kind])
    _, inp, tmap = _inputs(proc, answer=None)
    got = {}
    M.native_qk(vlm, inp, tmap, lambda l, q, k: got.__setitem__(l, (q, k)))
    with torch.no_grad():
        attn = vlm(**inp, output_attentions=True).attentions
    a, b = 2, 0  # later frame attends to the earlier one
    for l, (q, k) in got.items():
        ours = torch.softmax(torch.einsum("thd,shd->hts", q[a], k[b]) / q.shape[-1] ** 0.5, -1)  # (H, T, T)
        theirs = attn[l][0][:, tmap[a].flatten()][:, :, tmap[b].flatten()]
        theirs = theirs / theirs.sum(-1, keepdim=True)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # rotary=False: the q_proj / k_proj outputs themselves
    pre, proj = {}, {}
    attn0 = M.llm_layers(vlm)[0].self_attn
    hooks = [attn0.q_proj.register_forward_hook(lambda m, a, o: proj.__setitem__("q", o[0, tmap.flatten()])),
             attn0.k_proj.register_forward_hook(lambda m, a, o: proj.__setitem__("k", o[0, tmap.flatten()]))]
    M.native_qk(vlm, inp, tmap, lambda l, q, k: pre.__setitem__(l, (q, k)), layers=[0], rotary=False)
    for h in hooks:
        h.remove()
    q, k = pre[0]
    torch.testing.assert_close(q.flatten(0, 1).flatten(1), proj["q"])
    n_rep = q.shape[2] * q.shape[3] // proj["k"].shape[1]  # GQA: every n_rep-th head is a distinct key head
    torch.testing.assert_close(k.flatten(0, 1)[:, ::n_rep].flatten(1), proj["k"])


@pytest.mark.parametrize("kind", KINDS)
def test_export_is_a_stock_checkpoint_with_same_logits(tiny, kind, tmp_path):
    vlm, proc = M.load(tiny[kind])
    stock_params = sum(p.numel() for p in vlm.parameters())
    train = M.freeze_and_lora(vlm, lora_rank=4)
    gasp = M.GASP(train, r=16)
    with torch.no_grad():  # make LoRA non-trivial so merging matters
        for n, p in train.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    _, inp, tmap = _inputs(proc)
    with torch.no_grad():
        want = gasp.embed(inp, tmap)[0].logits
    M.export(gasp, proc, str(tmp_path))
    cls = type(M.bare_vlm(gasp))
    back = cls.from_pretrained(str(tmp_path)).eval()  # the stock class, no project code
    assert sum(p.numel() for p in back.parameters()) == stock_params
    with torch.no_grad():
        torch.testing.assert_close(back(**inp).logits, want, atol=1e-4, rtol=1e-4)
    assert not any("lora" in k or "heads" in k for k in back.state_dict())


def test_gradients_reach_llm_and_heads_not_vision_and_all_loss_paths_agree(tiny):
    """Loss on the returned embeddings (all frames), loss inside GASP.forward (per-layer checkpoint,
    anchor split), and the same with the LLM's gradient checkpointing: equal losses and gradients."""
    results = []
    for inside, ckpt in ((False, False), (True, False), (True, True)):
        torch.manual_seed(0)
        vlm, proc = M.load(tiny["qwen2_5_vl"])
        vlm.train()
        M.freeze_and_lora(vlm)
        if ckpt:
            vlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        gasp = M.GASP(vlm, r=16)
        _, inp, tmap = _inputs(proc)
        Fr, (h, w), px = 3, proc.grid, proc.token_px
        g = torch.Generator().manual_seed(1)
        sample = {"tracks": torch.rand(Fr, 20, 2, generator=g) * px * w, "visible": torch.ones(Fr, 20, dtype=torch.bool),
                  "track_depth": torch.full((Fr, 20), 2.0), "depth": torch.rand(Fr, h * px, w * px, generator=g) + 1,
                  "anchor": 1}
        t = pair_targets(sample, px, proc.grid)
        if inside:
            out, corr, depth = gasp(inp, tmap, anchor=1, loss=partial(gasp_losses, targets=t, q_offset=1))
        else:
            out, e_q, e_k = gasp.embed(inp, tmap)
            corr, depth = gasp_losses(e_q, e_k, t)
        total_loss(out.loss, corr, depth).backward()
        assert all(p.grad is None for p in vlm.model.visual.parameters())
        layers = M.llm_layers(vlm)
        assert all(layers[i].self_attn.q_proj.weight.grad.abs().sum() > 0 for i in range(len(layers)))
        assert gasp.heads.w1.grad.abs().sum() > 0
        results.append((corr.detach(), depth.detach(), layers[0].self_attn.k_proj.weight.grad.clone(),
                        gasp.heads.w1.grad.clone()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_unsupported_model_lists_supported():
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   vocab_size=100)
    with pytest.raises(ValueError, match="qwen2_5_vl, qwen2_vl, llava_next_video"):
        M.frame_size(cfg)


def test_frame_size_gives_whole_tokens(tiny):
    cfg = transformers.AutoConfig.from_pretrained(tiny["qwen2_5_vl"])
    assert M.frame_size(cfg, 336) == (336, 336) and M.frame_size(cfg, 440) == (448, 448)
    cfg = transformers.AutoConfig.from_pretrained(tiny["llava_next_video"])
    assert M.frame_size(cfg, 999) == (224, 224)


def test_plain_forward_after_gasp_forward_ignores_stale_positions(tiny):
    vlm, proc = M.load(tiny["qwen2_5_vl"])
    gasp = M.GASP(vlm, r=16)
    _, inp, tmap = _inputs(proc, F=3)
    gasp.embed(inp, tmap)
    _, short, _ = _inputs(proc, F=1)
    with torch.no_grad():
        vlm(**short)  # shorter sequence: stale (F=3) positions would index out of range
    assert gasp._pos is None


def test_anchor_forward_embeds_only_the_frames_the_pairs_read(tiny):
    vlm, proc = M.load(tiny["qwen2_5_vl"])
    gasp = M.GASP(vlm, r=16)
    _, inp, tmap = _inputs(proc, F=3)
    with torch.no_grad():
        _, q_all, k_all = gasp.embed(inp, tmap)
        seen = []

        def loss(e_q, e_k):  # records what the loss of each layer is handed
            seen.append((e_q, e_k))
            return e_q.sum()[None], e_k.sum()[None]

        gasp(inp, tmap, anchor=1, loss=loss)
    q_a, k_a = (torch.cat(x) for x in zip(*seen))
    torch.testing.assert_close(q_a, q_all[:, 1:])
    torch.testing.assert_close(k_a, k_all[:, :2])


def test_parse_layers_includes_both_ends_and_rejects_bad_specs():
    assert M.parse_layers("all", 4) == [0, 1, 2, 3]
    assert M.parse_layers("1-3", 4) == [1, 2, 3]  # both ends included
    assert M.parse_layers("0,2", 4) == [0, 2]
    for bad in ("2-4", "0-9", "5", "", "a-b", "3-1", "1,,2", "-1"):
        with pytest.raises(ValueError, match=r"0\.\.3"):
            M.parse_layers(bad, 4)
