"""model.py on tiny random-init configs of the real classes: exact logits, token map, export, gradients."""

import filecmp
import gc
import json
import os
import weakref
from functools import partial

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import model as M
from losses import attention_loss, gasp_losses, pair_targets, total_loss

KINDS = list(M.SUPPORTED)
# Attention heads, KV heads and head size of each tiny model: GQA 2:1 as the 7B models; head size 32, or 16 !=
# hidden / heads where the family's attention allows it (Qwen2/2.5-VL's takes hidden / heads); InternVL an odd
# number of heads, GQA 3:1 and head size 24 (3 x 24 != 128), shapes no other family has.
SHAPES = {k: (4, 2, 16 if k in ("qwen3_vl", "llava_next_video", "llava_onevision") else None) for k in KINDS}
SHAPES["internvl"] = (3, 1, 24)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {k: M.build_tiny(str(root / k), k, heads=h, kv_heads=kv, head_dim=d) for k, (h, kv, d) in SHAPES.items()}


def _load(tiny, kind, **kw):
    """The tiny model at 224 px (8x8 or 7x7 tokens per frame): fast tests."""
    return M.load(tiny[kind], size=(224, 224), **kw)[:2]


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
    vlm, proc = _load(tiny, kind)
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
    """G8's input is what the attention itself computes: softmax(q k^T / sqrt(d_h)) of the later frame's tokens
    over the earlier frame's tokens equals the model's eager attention probabilities restricted to those keys
    and renormalised, head by head (GQA 2:1, head sizes 32 and 16; InternVL 3 heads, GQA 3:1, head size 24).
    Under sdpa the same q and k."""
    heads, _, d_h = SHAPES[kind]
    vlm, proc = _load(tiny, kind, attn_implementation="eager")
    _, inp, tmap = _inputs(proc, answer=None)
    got = {}
    M.native_qk(vlm, inp, tmap, lambda l, q, k: got.__setitem__(l, (q, k)))
    assert sorted(got) == list(range(len(M.llm_layers(vlm))))
    with torch.no_grad():
        attn = vlm(**inp, output_attentions=True).attentions
    assert M.text_config(vlm)._attn_implementation == "eager" and not M._READERS  # the model's own again
    a, b = 2, 0  # later frame attends to the earlier one
    for l, (q, k) in got.items():
        assert q.shape == k.shape == (3, proc.grid[0] * proc.grid[1], heads, d_h or 32)
        ours = torch.softmax(torch.einsum("thd,shd->hts", q[a], k[b]) / q.shape[-1] ** 0.5, -1)  # (H, T, T)
        theirs = attn[l][0][:, tmap[a].flatten()][:, :, tmap[b].flatten()]
        theirs = theirs / theirs.sum(-1, keepdim=True)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.mean(0), theirs.mean(0), atol=1e-5, rtol=1e-4)  # the probe's head mean
    sdpa, _ = _load(tiny, kind, attn_implementation="sdpa")
    got_sdpa = {}
    with torch.no_grad():
        out = M.native_qk(sdpa, inp, tmap, lambda l, q, k: got_sdpa.__setitem__(l, (q, k)))
        torch.testing.assert_close(out.logits, vlm(**inp).logits, atol=1e-4, rtol=1e-4)
    for l in got:
        torch.testing.assert_close(got_sdpa[l], got[l], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_pre_rotary_read_is_where_the_heads_read(tiny, kind):
    """rotary=False and the heads read q_norm / k_norm (Qwen3-VL) or q_proj / k_proj outputs."""
    vlm, proc = _load(tiny, kind)
    _, inp, tmap = _inputs(proc, answer=None)
    q_mod, k_mod = M.qk_modules(M.llm_layers(vlm)[0].self_attn)
    assert (q_mod is getattr(M.llm_layers(vlm)[0].self_attn, "q_norm", None)) == (kind == "qwen3_vl")
    proj = {}
    hooks = [q_mod.register_forward_hook(lambda m, a, o: proj.__setitem__("q", o[0, tmap.flatten()].flatten(1))),
             k_mod.register_forward_hook(lambda m, a, o: proj.__setitem__("k", o[0, tmap.flatten()].flatten(1)))]
    pre = {}
    gasp = M.GASP(vlm, layers=[0], r=16)
    _, e_q, e_k = M.native_qk(vlm, inp, tmap, lambda l, q, k: pre.__setitem__(l, (q, k)), layers=[0],
                              forward=lambda: gasp.embed(inp, tmap), rotary=False)
    for h in hooks:
        h.remove()
    q, k = pre[0]
    torch.testing.assert_close(q.flatten(0, 1).flatten(1), proj["q"])
    n_rep = q.shape[2] * q.shape[3] // proj["k"].shape[1]  # GQA: every n_rep-th head is a distinct key head
    torch.testing.assert_close(k.flatten(0, 1)[:, ::n_rep].flatten(1), proj["k"])
    with torch.no_grad():
        torch.testing.assert_close(e_q.flatten(1, 3), gasp.heads(proj["q"][None]))
        torch.testing.assert_close(e_k.flatten(1, 3), gasp.heads(k.flatten(0, 1).flatten(1)[None]), atol=1e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_export_is_a_stock_checkpoint_with_same_logits_dtype_and_processor_files(kind, tmp_path):
    """A tiny base saved in bf16 with stock processor files -> trained in fp32 with LoRA -> export: bf16 weights,
    the base's processor / tokenizer / chat template / generation files byte for byte, the stock classes load it,
    and the stock (pillow) image processor takes any image size."""
    base, out = str(tmp_path / "base"), str(tmp_path / "export")
    M.build_tiny(base, kind, heads=4, kv_heads=2, dtype=torch.bfloat16)
    vlm, proc, _, _ = M.load(base, size=(224, 224))
    assert vlm.dtype == torch.float32  # trained in fp32
    stock_params = sum(p.numel() for p in vlm.parameters())
    train = M.freeze_and_lora(vlm, lora_rank=4)
    gasp = M.GASP(train, r=16)
    with torch.no_grad():  # make LoRA non-trivial so merging matters
        for n, p in train.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    _, inp, tmap = _inputs(proc)
    q0 = M.find_module(train, "language_model.layers.0.self_attn.q_proj")
    with torch.no_grad():
        want = gasp.embed(inp, tmap)[0].logits
        merged = q0.base_layer.weight + q0.lora_B["default"].weight @ q0.lora_A["default"].weight * q0.scaling["default"]
    M.export(gasp, proc, out)
    back = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()  # the stock class, no project code
    assert type(back) is type(M.bare_vlm(gasp)) and back.dtype == torch.bfloat16
    assert sum(p.numel() for p in back.parameters()) == stock_params
    assert not any("lora" in k or "heads" in k for k in back.state_dict())
    assert torch.equal(M.llm_layers(back)[0].self_attn.q_proj.weight, merged.to(torch.bfloat16))  # LoRA merged
    with torch.no_grad():  # the merged fp32 weights, rounded to bf16
        got = back.float()(**inp).logits
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    files = [f for f in os.listdir(base) if f in M.PROCESSOR_FILES]
    assert {"preprocessor_config.json", "tokenizer.json", "generation_config.json"} <= set(files)
    assert any(f.startswith("chat_template") for f in files)
    for f in files:
        assert filecmp.cmp(os.path.join(base, f), os.path.join(out, f), shallow=False), f
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == transformers.AutoTokenizer.from_pretrained(base).chat_template
    image_processor = transformers.AutoImageProcessor.from_pretrained(out)
    for shape in ((375, 500, 3), (1080, 1920, 3)):
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
        assert image_processor(images=[image], return_tensors="pt")["pixel_values"].numel() > 0


def _saved_bytes(fn):
    """Bytes autograd keeps for backward outside checkpointed regions while fn() runs (inside a region the
    checkpoint's own hooks take over and keep nothing), and fn's result."""
    total = [0]

    def pack(x):
        total[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    return total[0], out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_gradients_reach_llm_and_heads_not_vision_and_all_loss_paths_agree(tiny, kind):
    """Loss on the returned embeddings (all frames), loss inside GASP.forward (per-layer checkpoint,
    anchor split), and the same under the LLM's activation checkpointing: equal losses and gradients.
    Under the LLM's checkpointing the heads and losses run inside each layer's checkpoint and replay on
    recomputation: they keep nothing for backward beyond what the stock checkpointed forward keeps."""
    results = []
    for inside, ckpt in ((False, False), (True, False), (True, True)):
        torch.manual_seed(0)
        vlm, proc = _load(tiny, kind)
        vlm.train()
        M.freeze_and_lora(vlm)
        if ckpt:
            vlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        gasp = M.GASP(vlm, r=16)
        _, inp, tmap = _inputs(proc)
        t = pair_targets(_sample(proc), proc.token_px, proc.grid)
        if ckpt:  # (a forward between a GASP forward and its backward would stop the replay: measured first)
            stock, _ = _saved_bytes(lambda: vlm(**inp, use_cache=False))
        captured = []  # weak references to the q each layer's head read
        for j, i in enumerate(gasp.layer_ids):  # runs after GASP's own hook, which has just captured q
            M.qk_modules(M.llm_layers(vlm)[i].self_attn)[0].register_forward_hook(
                lambda *_: captured.append(weakref.ref(gasp._cap["q"])) if "q" in gasp._cap else None)
        if inside:
            kept, (out, corr, depth) = _saved_bytes(
                lambda: gasp(inp, tmap, anchor=1, loss=partial(gasp_losses, targets=t, q_offset=1)))
            gc.collect()
        else:
            out, e_q, e_k = gasp.embed(inp, tmap)
            corr, depth = gasp_losses(e_q, e_k, t)
        if ckpt:
            # The heads' q/k and activations do not outlive the layers: autograd keeps what the stock
            # checkpointed forward keeps, and Python holds nothing more but the loss scalars.
            assert kept - stock < 1024, (kept, stock)
            assert len(captured) == len(gasp.layer_ids) and all(ref() is None for ref in captured)
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
    for call in (M.frame_size, lambda c: M.Processor(c, None)):
        with pytest.raises(ValueError, match=", ".join(M.SUPPORTED)):
            call(cfg)
    assert len(M.SUPPORTED) == 6


def test_frame_size_gives_whole_tokens(tiny):
    cfg = transformers.AutoConfig.from_pretrained(tiny["qwen2_5_vl"])
    assert M.frame_size(cfg, 336) == (336, 336) and M.frame_size(cfg, 440) == (448, 448)
    cfg = transformers.AutoConfig.from_pretrained(tiny["qwen3_vl"])
    assert M.frame_size(cfg, 440) == (448, 448) and M.token_px(cfg) == 32
    cfg = transformers.AutoConfig.from_pretrained(tiny["internvl"])  # one tile, pixel shuffle: 2x2 patches of 14
    assert M.frame_size(cfg, 999) == (224, 224) and M.token_px(cfg) == 28
    with pytest.raises(ValueError, match="one tile"):
        M.Processor(cfg, transformers.AutoTokenizer.from_pretrained(tiny["internvl"]), size=(448, 448))
    for kind in ("llava_next_video", "llava_onevision"):  # the vision tower's input size, pooled 2x2
        cfg = transformers.AutoConfig.from_pretrained(tiny[kind])
        assert M.frame_size(cfg, 999) == (224, 224) and M.token_px(cfg) == 28
    cfg.vision_config.image_size = 384  # LLaVA-OneVision-7B: 27x27 SigLIP patches -> 14x14 tokens of 27 px
    assert M.token_px(cfg) == 27 and M.Processor(cfg, transformers.AutoTokenizer.from_pretrained(tiny[kind])).grid == (14, 14)


def test_plain_forward_after_gasp_forward_ignores_stale_positions(tiny):
    vlm, proc = _load(tiny, "qwen2_5_vl")
    gasp = M.GASP(vlm, r=16)
    _, inp, tmap = _inputs(proc, F=3)
    gasp.embed(inp, tmap)
    _, short, _ = _inputs(proc, F=1)
    with torch.no_grad():
        vlm(**short)  # shorter sequence: stale (F=3) positions would index out of range
    assert gasp._pos is None


def test_anchor_forward_embeds_only_the_frames_the_pairs_read(tiny):
    vlm, proc = _load(tiny, "qwen2_5_vl")
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
    with pytest.raises(ValueError, match="embed"):  # forward returns losses only; embeddings come from embed()
        gasp(inp, tmap)
    out, corr, depth = gasp(inp)  # instruction items: the stock forward
    assert corr is None and depth is None and torch.equal(out.logits, gasp.embed(inp, tmap)[0].logits)


def test_parse_layers_includes_both_ends_and_rejects_bad_specs():
    assert M.parse_layers("all", 4) == [0, 1, 2, 3]
    assert M.parse_layers("1-3", 4) == [1, 2, 3]  # both ends included
    assert M.parse_layers("0,2", 4) == [0, 2]
    for bad in ("2-4", "0-9", "5", "", "a-b", "3-1", "1,,2", "-1"):
        with pytest.raises(ValueError, match=r"0\.\.3"):
            M.parse_layers(bad, 4)


def _sample(proc, Fr=3, N=20, seed=1):
    (h, w), px = proc.grid, proc.token_px
    g = torch.Generator().manual_seed(seed)
    return {"tracks": torch.rand(Fr, N, 2, generator=g) * px * w, "visible": torch.ones(Fr, N, dtype=torch.bool),
            "track_depth": torch.full((Fr, N), 2.0), "depth": torch.rand(Fr, h * px, w * px, generator=g) + 1,
            "anchor": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_two_gasp_training_steps(tiny, kind):
    """Two optimizer steps of L_LM + G4 + G5 with LoRA: finite losses, gradients on the heads and LoRA, none on
    the frozen vision tower, and the losses move."""
    torch.manual_seed(0)
    vlm, proc = _load(tiny, kind)
    net = M.GASP(M.freeze_and_lora(vlm.train(), lora_rank=4), layers=M.parse_layers("1-3", 4), r=16)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    _, inp, tmap = _inputs(proc)
    targets = pair_targets(_sample(proc), proc.token_px, proc.grid)
    losses = []
    for _ in range(2):
        out, corr, depth = net(inp, tmap, anchor=1, loss=partial(gasp_losses, targets=targets, q_offset=1))
        assert corr.shape == depth.shape == (3,)
        loss = total_loss(out.loss, corr, depth)
        assert torch.isfinite(loss)
        loss.backward()
        assert net.heads.w1.grad.abs().sum() > 0 and net.heads.w2.grad.abs().sum() > 0
        lora = [p.grad for n, p in net.named_parameters() if "lora_B" in n]  # B starts at 0, A gets no grad yet
        assert lora and all(g is not None for g in lora) and sum(g.abs().sum() for g in lora) > 0
        assert all(p.grad is None for n, p in net.named_parameters() if "vision" in n or "visual" in n)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] != losses[1]


def test_prompt_layout_follows_the_stock_processors_rule_metaspace_and_byte_level(tiny):
    """The token layout the stock processors produce, written from their documented rule: the chat template's
    text with each placeholder repeated once per visual token, tokenized in one piece (LLaVA-NeXT-Video:
    `<video>` x F*h*w; Qwen2.5-VL: `<|vision_start|><|video_pad|> x F*h*w <|vision_end|>`)."""
    # LLaVA-NeXT-Video, SentencePiece-style (Metaspace) tokenizer with BOS
    _, proc = _load(tiny, "llava_next_video")
    tok, n = proc.tokenizer, 3 * proc.grid[0] * proc.grid[1]
    assert type(tok.backend_tokenizer.pre_tokenizer).__name__ == "Metaspace"
    ids = proc([np.zeros((3, 224, 224, 3), np.uint8)], ["Which point matches?"])["input_ids"][0].tolist()
    assert ids == tok("USER: " + "<video>" * n + "\nWhich point matches? ASSISTANT:")["input_ids"]
    assert ids[0] == tok.bos_token_id
    after = ids[ids.index(proc.vis_id) + n]
    assert tok.convert_ids_to_tokens(after) == "\n"  # no extra '▁' after <video> (piece-by-piece gave one)
    batch = proc([np.zeros((3, 224, 224, 3), np.uint8)], ["Which point matches?"], ["yes"])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tok.decode(labelled).strip().startswith("yes") and labelled[-1] == tok.eos_token_id
    # Qwen2.5-VL, byte-level tokenizer, default system turn
    _, proc = _load(tiny, "qwen2_5_vl")
    tok, n = proc.tokenizer, proc.grid[0] * proc.grid[1]
    video = "<|vision_start|>" + "<|video_pad|>" * 2 * n + "<|vision_end|>"  # two frames, one video
    want = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + video +
            "Which point matches?<|im_end|>\n<|im_start|>assistant\n")
    batch = proc([np.zeros((2, 224, 224, 3), np.uint8)], ["Which point matches?"], ["B"])
    assert batch["input_ids"][0].tolist() == tok(want + "B<|im_end|>\n")["input_ids"]
    assert tok.decode(batch["labels"][0][batch["labels"][0] != -100]) == "B<|im_end|>\n"
    assert batch["video_grid_thw"].tolist() == [[2, 2 * proc.grid[0], 2 * proc.grid[1]]]  # a frame per grid
    assert batch["second_per_grid_ts"].tolist() == [0.5]
    # LLaVA-OneVision: one newline position after the last frame, skipped by the token map
    _, proc = _load(tiny, "llava_onevision")
    inp = proc([np.zeros((2, 224, 224, 3), np.uint8)], ["Which point matches?"])
    pos = (inp["input_ids"][0] == proc.vis_id).nonzero().flatten()
    assert len(pos) == 2 * 64 + 1 and torch.equal(proc.token_map(inp["input_ids"][0], 2).flatten(), pos[:-1])


def test_bf16_weights_train_fp32_lora_and_heads_under_autocast(tiny):
    vlm, proc = _load(tiny, "qwen3_vl", dtype="bfloat16")  # model.load takes the dtype by name
    with pytest.raises(ValueError, match="lora_rank"):
        M.freeze_and_lora(vlm, lora_rank=-1)
    net = M.GASP(M.freeze_and_lora(vlm.train(), lora_rank=4), r=16)
    assert vlm.dtype == torch.bfloat16 and {p.dtype for p in net.parameters() if p.requires_grad} == {torch.float32}
    _, inp, tmap = _inputs(proc)
    targets = pair_targets(_sample(proc), proc.token_px, proc.grid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, corr, depth = net(inp, tmap, anchor=1, loss=partial(gasp_losses, targets=targets, q_offset=1))
        loss = total_loss(out.loss, corr, depth)
    loss.backward()
    assert torch.isfinite(loss) and net.heads.w1.grad.abs().sum() > 0


def test_processor_template_of_the_checkpoint_when_the_tokenizer_has_none(tmp_path):
    """llava-hf checkpoints keep the chat template in the processor's chat_template.json."""
    base = M.build_tiny(str(tmp_path), "llava_next_video", layers=1)
    os.remove(os.path.join(base, "chat_template.jinja"))
    template = M.family("llava_next_video").template.replace("upper() + ': '", "upper() + ':: '")
    with open(os.path.join(base, "chat_template.json"), "w") as f:
        json.dump({"chat_template": template}, f)
    vlm, proc, _, _ = M.load(base)
    assert not proc.tokenizer.chat_template and proc.template == template
    ids = proc([np.zeros((1, 224, 224, 3), np.uint8)], ["Hi"])["input_ids"][0]
    assert proc.tokenizer.decode(ids).replace(" ", "").startswith("<s>USER::<video>")


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_frames_keep_their_own_grid_and_video_position_ids(tiny, kind):
    """Qwen2-VL / Qwen2.5-VL take the frames as one video, each frame repeated to fill a temporal patch: the
    vision tower gives every frame the features it gives that frame as an image, all frames share the spatial
    M-RoPE ids and the temporal id moves one step a frame. Qwen3-VL places every frame of a video like an image
    (its own ids after the previous frame's), so it keeps the image list."""
    vlm, proc = _load(tiny, kind)
    frames = np.random.default_rng(0).integers(0, 255, (3, *proc.size, 3), dtype=np.uint8)
    inp = proc([frames], ["Which point matches?"])
    tmap = proc.token_map(inp["input_ids"][0], 3)  # (F, h, w)
    keys = ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts",
            "attention_mask")
    pos = vlm.model.get_rope_index(**{k: v for k, v in inp.items() if k in keys})[0][:, 0]  # (3, S)
    t, hw = pos[0, tmap], pos[1:, tmap]  # (F, h, w), (2, F, h, w)
    assert (t == t[:, :1, :1]).all()  # one temporal id per frame
    if kind == "qwen3_vl":
        assert "pixel_values" in inp and (hw[:, 1] > hw[:, 0]).all()  # every id moves on: an image list
        return
    assert torch.equal(t[:, 0, 0] - t[0, 0, 0], torch.arange(3))  # one step a frame (Qwen2.5-VL: 2 tokens/s x 0.5 s)
    assert (hw == hw[:, :1]).all()  # spatial ids shared by all frames
    with torch.no_grad():
        video = vlm.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"]).pooler_output
        images = [vlm.model.get_image_features(p, g[None]).pooler_output for p, g in zip(
            inp["pixel_values_videos"].chunk(3), torch.tensor([[1, *inp["video_grid_thw"][0, 1:]]] * 3))]
    assert torch.allclose(torch.cat(video), torch.cat([torch.cat(i) for i in images]), atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "llava_onevision"])
def test_attention_loss_reads_what_the_attention_receives(tiny, kind):
    """--lambda-attn: GASP.forward's L_attn of every layer equals attention_loss on the q and k the probe reads (the
    attention function's own, rotary applied, GQA keys repeated), and its gradient reaches q_proj and k_proj."""
    vlm, proc = _load(tiny, kind)
    gasp = M.GASP(M.freeze_and_lora(vlm.train()), r=16)
    _, inp, tmap = _inputs(proc, answer=None)
    t = pair_targets(_sample(proc), proc.token_px, proc.grid)
    nat = partial(attention_loss, targets=t, grid=proc.grid, q_offset=1)
    _, corr, _, got = gasp(inp, tmap, anchor=1, loss=partial(gasp_losses, targets=t, q_offset=1), attention=nat)
    want = {}

    def read(l, q, k):  # (F, T, H, d_h) each
        want[l] = nat(q[1:].flatten(0, 1).transpose(0, 1), k[:2].flatten(0, 1).transpose(0, 1))

    M.native_qk(vlm, inp, tmap, read)
    assert got.shape == corr.shape == (4,)
    torch.testing.assert_close(got.detach(), torch.cat([want[l] for l in range(4)]), atol=1e-5, rtol=1e-5)
    got.sum().backward()
    attn = M.llm_layers(vlm)[2].self_attn
    assert attn.q_proj.weight.grad.abs().sum() > 0 and attn.k_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_answer_logits_only_gives_the_full_loss_and_gradients(tiny, kind):
    """L_LM from the answer's logits alone (train.py's LM items) equals the stock loss over the whole sequence, with
    the same gradients; the kept window starts one position before the first supervised token."""
    torch.manual_seed(0)
    vlm, proc = _load(tiny, kind)
    _, inp, _ = _inputs(proc, F=2, answer="B C")
    short = M.answer_logits_only(inp)
    first = int((inp["labels"][0] != -100).nonzero()[0])
    assert short["logits_to_keep"] == inp["labels"].shape[1] - first + 1 == short["labels"].shape[1]
    assert short["labels"][0, 0] == -100 and (short["labels"][0, 1:] == inp["labels"][0, first:]).all()
    losses, grads = [], []
    for x in (inp, short):
        vlm.zero_grad(set_to_none=True)
        out = vlm(**x, use_cache=False)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(M.llm_layers(vlm)[0].self_attn.q_proj.weight.grad.clone())
    assert out.logits.shape[1] == short["logits_to_keep"]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no label is supervised"):
        M.answer_logits_only({**inp, "labels": torch.full_like(inp["labels"], -100)})


def _copy_with_config(src: str, dst, **change) -> str:
    """A copy of checkpoint folder src with config.json fields changed."""
    import shutil
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(dict(config, **change)))
    return str(dst)


def test_placeholders_come_from_the_checkpoint_and_unusable_ones_are_named_at_load(tiny, tmp_path):
    """The placeholder is the token the checkpoint's config names, looked up in its own tokenizer; a config whose
    video token the tokenizer lacks, or names an ordinary text piece or another special token, is a one-line error
    at load time naming the folder, what is missing and the fix (not a mismatch inside the model's forward)."""
    base = tiny["llava_next_video"]
    tok = transformers.AutoTokenizer.from_pretrained(base)
    _, proc = _load(tiny, "llava_next_video")
    assert proc.placeholder == "<video>" == tok.convert_ids_to_tokens(proc.vis_id)
    ordinary = next(i for t, i in sorted(tok.get_vocab().items()) if t not in tok.get_added_vocab())
    cases = [(dict(video_token_index=len(tok) + 7), "has no token in the tokenizer"),
             (dict(video_token_index=ordinary), "a piece of ordinary text"),
             (dict(video_token_index=tok.bos_token_id), "the tokenizer's own BOS"),
             (dict(video_token_index=tok.convert_tokens_to_ids("<image>")), "holds 0 video placeholder.*'<image>'.*"
                                                                            "no video branch.*fix the tokenizer's chat template")]
    for n, (change, message) in enumerate(cases):
        path = _copy_with_config(base, tmp_path / f"case{n}", **change)
        with pytest.raises(ValueError, match=message) as err:
            M.load(path)
        assert str(err.value).startswith(path) and "\n" not in str(err.value)
        assert "video_token_index" in str(err.value) and ("config.json" in str(err.value) or n == 3)
    # A placeholder that is another added token, written by the chat template, is taken as the checkpoint says.
    path = _copy_with_config(base, tmp_path / "renamed", video_token_index=tok.convert_tokens_to_ids("<image>"))
    template = (tmp_path / "renamed" / "chat_template.jinja").read_text()
    (tmp_path / "renamed" / "chat_template.jinja").write_text(template.replace("<video>", "<image>"))
    cfg = transformers.AutoConfig.from_pretrained(path)
    proc = M.Processor(cfg, transformers.AutoTokenizer.from_pretrained(path), folder=path)
    assert proc.placeholder == "<image>"
    frames = np.zeros((2, *proc.size, 3), np.uint8)
    assert proc.token_map(proc([frames], ["Q?"])["input_ids"][0], 2).shape == (2, *proc.grid)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_a_chat_template_without_the_frames_branch_is_named_at_load(tiny, tmp_path, kind):
    """A fine-tuned Qwen checkpoint whose chat template keeps only the image branch cannot write the video that
    Qwen2.5-VL's frames are (and one keeping only the video branch, Qwen3-VL's images): refused by model.load,
    naming the folder and the fix. Official image inputs (BLINK) of the image-only Qwen2.5-VL template still work."""
    import shutil
    keep, drop = ("image", "video") if kind == "qwen2_5_vl" else ("video", "image")
    path = tmp_path / kind
    shutil.copytree(tiny[kind], path)
    template = (path / "chat_template.jinja").read_text()
    branch = f"{{% elif c['type'] == '{drop}' %}}<|vision_start|><|{drop}_pad|><|vision_end|>"
    if drop == "image":
        branch = branch.replace("{% elif", "{% if", 1)
        template = template.replace(branch, "{% if False %}")
    else:
        template = template.replace(branch, "")
    assert f"<|{drop}_pad|>" not in template
    (path / "chat_template.jinja").write_text(template)
    with pytest.raises(ValueError, match=f"holds 0 {drop} placeholder.*no {drop} branch.*chat_template.jinja") as err:
        M.load(str(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    if kind == "qwen2_5_vl":  # eval.py loads with the benchmark: only what its official inputs need is checked
        _, blink, _, _ = M.load(str(path), benchmark="blink")
        batch, (record,) = blink.build([[np.zeros((56, 56, 3), np.uint8)]], ["Q?"])
        assert record["mode"] == "images" and record["tokens"] == int((batch["mm_token_type_ids"] == 1).sum()) > 0


def _stock_internvl_processor(tokenizer, image_processor, image_seq_length: int):
    """transformers' own InternVLProcessor without its video processor (that one needs torchvision, which its
    __init__ checks for): the stock __call__, replace_image_token and replace_video_token on the attributes its
    __init__ would set from the tokenizer."""
    import re
    stock = object.__new__(transformers.InternVLProcessor)
    stock.image_processor, stock.tokenizer, stock.video_processor = image_processor, tokenizer, None
    stock.chat_template, stock.image_seq_length = tokenizer.chat_template, image_seq_length
    stock.start_image_token, stock.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
    stock.image_token, stock.video_token = tokenizer.context_image_token, tokenizer.video_token
    stock.image_token_id = tokenizer.context_image_token_id
    stock.multimodal_pattern = re.compile(f"(?P<image>{re.escape(stock.image_token)})|"
                                          f"(?P<video>{re.escape(stock.video_token)})")
    return stock


def test_internvl_layout_equals_the_stock_processor(tiny):
    """InternVL's inputs are the stock InternVLProcessor's: images (official BLINK) through crop_to_patches, tiles
    plus a thumbnail, `<img>` + `<IMG_CONTEXT>` x 64 (224-px tiles: 16 x 16 patches, pixel shuffle 0.5) x tiles +
    `</img>`, the same ids and pixels as the stock processor's own __call__; frames (training, official VSI-Bench)
    one tile each, as the stock video path writes them: "Frame{i}: <img>...</img>" lines joined by newlines."""
    path = tiny["internvl"]
    cfg = transformers.AutoConfig.from_pretrained(path)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    stock = _stock_internvl_processor(tok, transformers.AutoImageProcessor.from_pretrained(path), 64)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (300, 700, 3), dtype=np.uint8), rng.integers(0, 255, (90, 80, 3), dtype=np.uint8)]
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                                 {"type": "text", "text": "Which?"}]}],
                                   add_generation_prompt=True, tokenize=False)
    want = stock(images=images, text=[text], return_tensors="pt")
    blink = M.Processor(cfg, tok, folder=path, benchmark="blink")
    batch, (record,) = blink.build([images], ["Which?"])
    assert torch.equal(batch["input_ids"], want["input_ids"]) and torch.equal(batch["pixel_values"], want["pixel_values"])
    tiles = [g[0] for g in record["grids"]]
    assert tiles[0] > 2 and tiles[1] == 1 and len(batch["pixel_values"]) == sum(tiles)  # thumbnail only when tiled
    assert record["tokens"] == 64 * sum(tiles) == int((batch["input_ids"] == cfg.image_token_id).sum())
    ids = batch["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids("<img>")) == ids.count(tok.convert_tokens_to_ids("</img>")) == 2
    # Frames: the stock video text for F frames, its <video> placeholder replaced as the stock processor does.
    for benchmark in (None, "vsibench"):
        proc = M.Processor(cfg, tok, folder=path, benchmark=benchmark)
        frames = rng.integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
        video = transformers.InternVLProcessor.replace_video_token(stock, {"pixel_values_videos": [frames]}, 0)
        assert video.startswith("Frame1: <img><IMG_CONTEXT>") and "</img>\nFrame2: <img>" in video
        text = tok.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q?"}]}],
                                       add_generation_prompt=True, tokenize=False)
        batch, (record,) = proc.build([frames], ["Q?"])
        assert batch["input_ids"][0].tolist() == tok(text.replace("<video>", video))["input_ids"]
        assert batch["pixel_values"].shape == (3, 3, 224, 224) and record["tokens"] == 3 * 64
        assert proc.token_map(batch["input_ids"][0], 3).shape == (3, 8, 8)
    labelled = proc([frames], ["Q?"], ["B"])["labels"][0]
    assert tok.decode(labelled[labelled != -100]) == "B<|im_end|>\n"


def test_internvl_without_its_named_tokens_is_refused_at_load(tiny, tmp_path):
    """A tokenizer that does not name <img> / </img> / <video> (tokenizer_config.json extra_special_tokens) cannot
    write InternVL's layout: refused when the Processor is built, naming the attribute and the fix."""
    path = tmp_path / "internvl"
    import shutil
    shutil.copytree(tiny["internvl"], path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("start_image_token")  # transformers 5 writes the extra special tokens as top-level keys
    assert "start_image_token" not in json.dumps(config.get("extra_special_tokens"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="start_image_token.*tokenizer_config.json") as err:
        M.load(str(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_llava_onevision_image_inputs_equal_the_stock_processor(tiny):
    """LLaVA-OneVision's official image inputs are the stock LlavaOnevisionProcessor's (its own __call__ on the
    attributes its __init__ sets, its video processor left out: that one needs torchvision): the same ids and
    pixel_values for a lone image of a few sizes (anyres tiles, unpadded grid, a newline per row, the max_9
    downsampling past 9 tiles' worth) and for several images of one question (padded squares, 16 x 16 + 1 tokens
    each at 224 px);
    the batch runs through the tiny model's forward without a feature / token mismatch."""
    from families.inputs import onevision_processor
    path = tiny["llava_onevision"]
    cfg = transformers.AutoConfig.from_pretrained(path)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    vlm = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    rng = np.random.default_rng(0)
    sizes = [[(300, 700)], [(224, 224)], [(90, 80)], [(1000, 1200)], [(300, 700), (90, 80)]]
    proc = M.Processor(cfg, tok, folder=path, benchmark="blink")
    counts = []
    for shapes in sizes:
        images = [Image.fromarray(rng.integers(0, 255, (*s, 3), dtype=np.uint8)) for s in shapes]
        batch, (record,) = proc.build([images], ["Which?"])
        stock = onevision_processor(cfg, tok, "<image>", proc.mean, proc.std)
        want = stock(images=[images], text=[proc.text(len(images), "Which?")], return_tensors="pt")
        assert torch.equal(batch["input_ids"], want["input_ids"])
        assert torch.equal(batch["pixel_values"], want["pixel_values"].float())
        assert batch["batch_num_images"].tolist() == want["batch_num_images"].tolist() == [len(images)]
        counts.append(record["tokens"])
        with torch.no_grad():
            assert vlm(**batch).logits.shape[1] == batch["input_ids"].shape[1]
    assert counts[-1] == 2 * (16 * 16 + 1) and counts[1] < counts[0]  # several images: one padded tile + newline each
    assert counts[3] > counts[0]  # a larger image: more tiles, up to the max_9 downsampling
    # The harness's conversation text (lmms-eval conv qwen_1_5), not the checkpoint's chat template.
    assert proc.text(2, "Which?") == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                      "<image> <image>\nWhich?<|im_end|>\n<|im_start|>assistant\n")
    # All-Angles (VLMEvalKit): every image tiled, "<image>\n" per image.
    allangles = M.Processor(cfg, tok, folder=path, benchmark="allangles")
    images = [Image.fromarray(rng.integers(0, 255, (300, 700, 3), dtype=np.uint8))] * 2
    batch, (record,) = allangles.build([images], ["Which?"])
    assert record["tokens"] == 2 * counts[0] and batch["batch_num_images"].tolist() == [1, 1]
    assert "<image>\n<image>\nWhich?" in allangles.text(2, "Which?")
    with torch.no_grad():
        assert vlm(**batch).logits.shape[1] == batch["input_ids"].shape[1]
