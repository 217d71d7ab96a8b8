"""A stock Hugging Face VLM with GASP's training-only correspondence heads (DESIGN.md "Models", G1, G8).

What lives here:
  * `Processor`: frames + text -> model inputs for Qwen2.5-VL, Qwen2-VL (frames as a list of
    images, one grid each) and LLaVA-NeXT-Video (frames as one video), built from the tokenizer
    and the pillow image processor alone (no torchvision, see README "Why no torchvision").
  * the per-frame visual-token map: sequence positions of every frame's (h, w) token grid, and
    the frame-size helpers that give whole tokens (multiples of 28 px for Qwen, the CLIP size for LLaVA);
  * `GASP`: wraps the stock model without changing its forward; forward hooks on each supervised
    layer's q_proj / k_proj (or input_layernorm) read x_l's projections of the visual tokens from
    the one training forward pass (gradient checkpointing safe) and feed the batched heads (G1);
  * `native_qk`: the layer's own q and k with rotary / M-RoPE applied, for the probe (G8);
  * freezing, LoRA through peft, and `export`: the bare VLM (heads dropped, LoRA merged) saved
    with its processor, loadable with the stock transformers class and no project code;
  * `build_tiny`: a random-init tiny model of the real classes, for tests and the embedded default.

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: Qwen2.5-VL (arXiv 2502.13923), LLaVA-NeXT-Video (llava-vl.github.io/blog/2024-04-30-llava-next-video),
GASP arXiv 2605.30231.
"""

import os

import numpy as np
import torch
import torch.nn as nn
import transformers
from PIL import Image
from torch.utils.checkpoint import checkpoint

from heads import CorrespondenceHeads, repeat_kv

# Notation: F frames, (h, w) token grid per frame, T = F*h*w visual tokens, L supervised layers,
# H query heads, d_h head size, S sequence length, B batch.

SUPPORTED = ("qwen2_5_vl", "qwen2_vl", "llava_next_video")
PROMPT = "These are frames of a video."  # the short generic prompt of geometry samples (no answer, no L_LM)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIAL = ["<unk>", "<s>", "</s>", "<image>", "<video>"]


def check_supported(config) -> str:
    if config.model_type not in SUPPORTED:
        raise ValueError(f"model type {config.model_type!r} has no visual-token map here; supported: "
                         f"{', '.join(SUPPORTED)}. Add its token layout to model.py (Processor, token_px).")
    return config.model_type


def token_px(config) -> int:
    """Pixels per LLM visual token along each axis."""
    if check_supported(config) == "llava_next_video":
        v = config.vision_config
        return v.image_size // (v.image_size // v.patch_size // config.spatial_pool_stride)
    return config.vision_config.patch_size * config.vision_config.spatial_merge_size


def frame_size(config, target: int = 448) -> tuple[int, int]:
    """(H, W) of the frames to feed so that every token covers whole pixels: Qwen takes any
    multiple of 28 px (target rounded), LLaVA-NeXT-Video its CLIP input size."""
    if check_supported(config) == "llava_next_video":
        return config.vision_config.image_size, config.vision_config.image_size
    px = token_px(config)
    side = max(px, round(target / px) * px)
    return side, side


class Processor:
    """Frames + prompt (+ answer) -> input dict of the stock model, with labels on answer tokens only."""

    def __init__(self, config, tokenizer, size: tuple[int, int] | None = None):
        self.config, self.tokenizer = config, tokenizer
        self.kind = check_supported(config)
        self.size = tuple(size or frame_size(config))
        self.token_px = token_px(config)
        self.grid = (self.size[0] // self.token_px, self.size[1] // self.token_px)  # (h, w) tokens per frame
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.kind == "llava_next_video":
            self.vis_id = config.video_token_index
        else:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
            self.vis_id = config.image_token_id
            v = config.vision_config
            self.image_processor = Qwen2VLImageProcessorPil(
                do_resize=False, patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                temporal_patch_size=v.temporal_patch_size)

    def resize(self, frame) -> np.ndarray:
        img = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
        img = img.convert("RGB")
        if img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), Image.BICUBIC)
        return np.asarray(img)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _sequence(self, num_frames: int, prompt: str, answer: str | None) -> tuple[list[int], int]:
        """Token ids of one conversation and the index where the answer starts."""
        tok, n = self.tokenizer, self.grid[0] * self.grid[1]
        if self.kind == "llava_next_video":  # llava-hf chat template: "USER: <video>\n{prompt} ASSISTANT:"
            ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + self._ids("USER: ")
            ids += [self.vis_id] * (num_frames * n) + self._ids("\n" + prompt + " ASSISTANT:")
            start = len(ids)
            if answer is not None:
                ids += self._ids(" " + answer) + [tok.eos_token_id]
            return ids, start
        # Qwen chat template, one <|vision_start|><|image_pad|>*n<|vision_end|> block per frame.
        c = self.config
        ids = self._ids("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
        for _ in range(num_frames):
            ids += [c.vision_start_token_id] + [self.vis_id] * n + [c.vision_end_token_id]
        ids += self._ids(prompt + "<|im_end|>\n<|im_start|>assistant\n")
        start = len(ids)
        if answer is not None:
            ids += self._ids(answer + "<|im_end|>") + self._ids("\n")
        return ids, start

    def __call__(self, frames, prompts, answers=None) -> dict:
        """frames: list (batch) of frame lists/arrays (F, H, W, 3) uint8; prompts: list of str.
        answers=None: left-padded, ends with the assistant prefix, ready for generate().
        answers given: right-padded with labels = answer tokens, -100 elsewhere."""
        seqs, labels, pixels, grids = [], [], [], []
        for i, (clip, prompt) in enumerate(zip(frames, prompts)):
            clip = [self.resize(f) for f in clip]
            ids, start = self._sequence(len(clip), prompt, None if answers is None else answers[i])
            seqs.append(ids)
            labels.append([-100] * start + ids[start:])
            if self.kind == "llava_next_video":
                x = torch.from_numpy(np.stack(clip)).permute(0, 3, 1, 2).float() / 255  # (F, 3, H, W)
                pixels.append((x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None])
            else:
                out = self.image_processor(images=clip, return_tensors="pt")
                pixels.append(out["pixel_values"])
                grids.append(out["image_grid_thw"])
        S = max(len(s) for s in seqs)
        left = answers is None
        pad = lambda s, v: ([v] * (S - len(s)) + s) if left else (s + [v] * (S - len(s)))  # noqa: E731
        batch = {"input_ids": torch.tensor([pad(s, self.pad_id) for s in seqs]),
                 "attention_mask": torch.tensor([pad([1] * len(s), 0) for s in seqs])}
        if answers is not None:
            batch["labels"] = torch.tensor([pad(lab, -100) for lab in labels])
        if self.kind == "llava_next_video":
            if len({p.shape for p in pixels}) > 1:
                raise ValueError("LLaVA-NeXT-Video batches need the same number of frames per item")
            batch["pixel_values_videos"] = torch.stack(pixels)  # (B, F, 3, H, W)
        else:
            batch["pixel_values"] = torch.cat(pixels)
            batch["image_grid_thw"] = torch.cat(grids)
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.vis_id).int()
        return batch

    def token_map(self, input_ids: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(F, h, w) sequence positions of each frame's visual tokens in one sequence (S,)."""
        pos = (input_ids == self.vis_id).nonzero().flatten()
        h, w = self.grid
        if pos.numel() != num_frames * h * w:
            raise ValueError(f"expected {num_frames}x{h}x{w} visual tokens, found {pos.numel()}")
        return pos.view(num_frames, h, w)  # frame-major, row-major: the order the vision tower emits

    def save_pretrained(self, path: str):
        self.tokenizer.save_pretrained(path)
        if self.kind != "llava_next_video":
            self.image_processor.save_pretrained(path)


def load(path: str, device="cpu", dtype=None, size=None, attn_implementation: str | None = None):
    """A stock checkpoint (HF id or folder, read offline if cached) -> (model in eval mode, Processor).
    dtype: the weights' dtype (None = float32); attn_implementation: sdpa | eager | flash_attention_2
    (None = transformers' default), passed to from_pretrained."""
    config = transformers.AutoConfig.from_pretrained(path)
    check_supported(config)
    if attn_implementation not in (None, "sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attn_implementation {attn_implementation!r}: use sdpa, eager or flash_attention_2")
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype or torch.float32, attn_implementation=attn_implementation)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), Processor(model.config, tokenizer, size)


# ----------------------------------------------------------------------------- tiny random-init models

def build_tokenizer(kind: str, vocab_size: int = 512):
    """A small byte-level BPE tokenizer made offline with `tokenizers`, carrying the model's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    special = LLAVA_SPECIAL if kind == "llava_next_video" else QWEN_SPECIAL
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["These are frames of a video. Which point in the last frame matches the marked point?",
              "Answer with the option's letter from the given choices directly. A B C D 0 1 2 3 4 5 6 7 8 9",
              "USER: ASSISTANT: system user assistant You are a helpful assistant. yes no left right"] * 4
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    names = dict(zip(["unk_token", "bos_token", "eos_token"], special)) if kind == "llava_next_video" else \
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)


def tiny_config(kind: str = "qwen2_5_vl", tokenizer=None, layers: int = 4, hidden: int = 128, heads: int = 2,
                kv_heads: int = 2, vision_layers: int = 2, vision_hidden: int = 64, intermediate: int | None = None,
                head_dim: int | None = None, mrope_section: list[int] | None = None, rope_theta: float = 1e6):
    """A few-MB config of the real class: same code paths as the 7B models, random weights.
    The defaults are the embedded default's model. Two heads of 64 (as Qwen's head size is 128, M-RoPE
    sections in the same proportions) instead of four of 32 with 2 KV heads: native Q-K PCK@2 after the
    demo 0.76 vs 0.66 (measured; M-RoPE scrambles a quarter of each head's dimensions across frames)."""
    tokenizer = tokenizer or build_tokenizer(kind)
    tid = tokenizer.convert_tokens_to_ids
    d_h = head_dim or hidden // heads
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=32768, head_dim=d_h)
    if kind == "llava_next_video":
        text.update(model_type="llama", bos_token_id=tid("<s>"), eos_token_id=tid("</s>"), pad_token_id=tid("</s>"))
        vision = dict(model_type="clip_vision_model", hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                      num_hidden_layers=vision_layers, num_attention_heads=2, image_size=224, patch_size=14,
                      projection_dim=hidden)
        return transformers.LlavaNextVideoConfig(text_config=text, vision_config=vision,
                                                 video_token_index=tid("<video>"), image_token_index=tid("<image>"))
    section = mrope_section or [d_h // 8, d_h // 8 * 3 // 2, d_h // 8 * 3 // 2]  # sums to d_h/2 (128: [16, 24, 24])
    text.update(rope_parameters=dict(rope_type="default", mrope_section=section, rope_theta=rope_theta),
                bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"), pad_token_id=tid("<|endoftext|>"))
    ids = dict(image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
               vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    if kind == "qwen2_vl":
        vision = dict(depth=vision_layers, embed_dim=vision_hidden, hidden_size=hidden, num_heads=2, mlp_ratio=2)
        return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    vision = dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
                  out_hidden_size=hidden, fullatt_block_indexes=[vision_layers - 1], window_size=112)
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


def build_tiny(out_dir: str, kind: str = "qwen2_5_vl", seed: int = 0, **config_kwargs) -> str:
    """Write a tiny random-init checkpoint of the real class + its tokenizer/image processor to out_dir
    (kept if out_dir already holds the same architecture; rebuilt if it holds another, e.g. an older default)."""
    tokenizer = build_tokenizer(kind)
    config = tiny_config(kind, tokenizer, **config_kwargs)
    if os.path.exists(os.path.join(out_dir, "config.json")):
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
        old, new = (getattr(c, "text_config", c) for c in (transformers.AutoConfig.from_pretrained(out_dir), config))
        if [getattr(old, k) for k in keys] == [getattr(new, k) for k in keys]:
            return out_dir
        print(f"{out_dir}: holds another tiny architecture; rebuilding it")
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageTextToText.from_config(config)
    model.save_pretrained(out_dir)
    Processor(model.config, tokenizer).save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- layers, hooks, heads

def find_module(model: nn.Module, suffix: str) -> nn.Module:
    """The module whose qualified name ends with `suffix` (works through peft wrappers)."""
    for name, mod in model.named_modules():
        if name.endswith(suffix):
            return mod
    raise ValueError(f"{type(model).__name__} has no module '*{suffix}'")


def llm_layers(model: nn.Module) -> nn.ModuleList:
    return find_module(model, "language_model.layers")


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'all' | 'A-B' (both ends included: '10-18' is the nine layers 10..18) | 'a,b,c' -> layer indices.
    Any index outside 0..num_layers-1, or an empty or garbled spec, is a ValueError naming the valid range."""
    valid = f"the model has layers 0..{num_layers - 1}; use 'all', 'A-B' (both ends included) or 'a,b,c'"
    spec = str(spec).strip()
    if spec == "all":
        return list(range(num_layers))
    try:
        if "-" in spec:
            lo, hi = (int(x) for x in spec.split("-"))
            ids = list(range(lo, hi + 1))
            if lo > hi:
                raise ValueError
        else:
            ids = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"--layers {spec!r}: not a layer spec; {valid}") from None
    if not ids or min(ids) < 0 or max(ids) >= num_layers:
        raise ValueError(f"--layers {spec!r}: out of range; {valid}")
    return ids


def qk_modules(attn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Where a layer's pre-rotary q and k are read: q_norm / k_norm (per-head RMSNorm, Qwen3) where the
    family has them, else q_proj / k_proj."""
    if hasattr(attn, "q_norm"):
        return attn.q_norm, attn.k_norm
    return attn.q_proj, attn.k_proj


def text_config(model: nn.Module):
    config = model.config
    return getattr(config, "text_config", config)


def head_size(config) -> int:
    """d_h, the attention head size of the LLM (text config)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class GASP(nn.Module):
    """Stock VLM + one correspondence head per supervised layer (G1), read inside the one forward pass.

    The VLM's forward is not changed: forward hooks only read the layer's pre-rotary q and k (the outputs of
    q_proj / k_proj, or of q_norm / k_norm where the family has them; input_layernorm for head_input="hidden")
    at the visual positions, and run that layer's head (and loss) as soon as its q and k exist.
      forward(inputs, token_map, anchor, loss) -> (stock output, L_corr (L,), L_depth (L,))   training
      forward(inputs)                          -> (stock output, None, None)                 instruction items
      embed(inputs, token_map)                 -> (stock output, e_q (L, F, h, w, r), e_k (L, F, h, w, r))
    """

    def __init__(self, vlm: nn.Module, layers=None, head_input: str = "qk", r: int = 256):
        super().__init__()
        if head_input not in ("qk", "hidden"):
            raise ValueError(f"head_input must be 'qk' or 'hidden', got {head_input!r}")
        self.vlm, self.head_input, self.r = vlm, head_input, r
        blocks, tc = llm_layers(vlm), text_config(vlm)
        self.layer_ids = list(range(len(blocks))) if layers is None else list(layers)
        self.d_head = head_size(tc)  # attention head size: folds W1 onto GQA keys
        attn = [blocks[i].self_attn for i in self.layer_ids]
        d_in = tc.num_attention_heads * self.d_head if head_input == "qk" else tc.hidden_size
        self.heads = CorrespondenceHeads(len(self.layer_ids), d_in, r)
        q_weights = [getattr(a.q_proj, "base_layer", a.q_proj).weight for a in attn]  # base weight under LoRA
        self.heads.init_from_query_projections(q_weights, head_input)
        self._pos = None  # {"q": (T_q,), "k": (T_k,)} visual positions read by the hooks, None = idle
        self._run = None  # (j, q, k) -> layer j's embeddings or losses: set during a GASP forward, kept for replay
        self._live = False  # True while a GASP forward runs; False in a checkpoint recomputation (replay)
        self._cap = {}  # the q capture of the layer running now, until its k arrives
        # A forward that does not come through GASP clears _pos, so the hooks stay idle.
        find_module(vlm, "language_model").register_forward_pre_hook(self._clear_stale)
        for j, i in enumerate(self.layer_ids):
            if head_input == "qk":
                q_mod, k_mod = qk_modules(attn[j])
                q_mod.register_forward_hook(self._hook("q", j))
                k_mod.register_forward_hook(self._hook("k", j))
            else:
                blocks[i].input_layernorm.register_forward_hook(self._hook("q", j))

    def _clear_stale(self, module, args):
        if not self._live:
            self._pos = self._run = None

    def _hook(self, side: str, j: int):
        def hook(module, args, out):
            if self._pos is None or self._run is None:
                return
            x = out[0, self._pos[side]].flatten(1)  # (T_side, d): visual tokens of sample 0 (q_norm: (T, H, d_h))
            self._cap[side] = x
            if side == "k" or self.head_input == "hidden":  # q has been computed before k
                # Under the LLM's activation checkpointing the layer is recomputed in backward and this hook
                # fires again with _live False: the same head (and loss) ops replay on the recomputed q and k,
                # so autograd finds the tensors it saved; their outputs are dropped.
                self._run(j, self._cap.pop("q"), self._cap.pop("k", None), self._live)
        return hook

    def _forward(self, inputs: dict, token_map: torch.Tensor, anchor: int | None, loss):
        """One stock forward with layer j's head (and loss) run inside layer j. Returns (out, [result_j])."""
        L, (Fr, h, w) = len(self.layer_ids), token_map.shape
        q_map, k_map = (token_map, token_map) if anchor is None else (token_map[anchor:], token_map[: anchor + 1])
        if self.head_input == "hidden":  # one capture of x_l serves both sides
            q_map = k_map = token_map
        dtype = self.heads.w1.dtype

        def embed(j: int, q: torch.Tensor, k: torch.Tensor | None):  # layer j -> (1, F_q, h, w, r), (1, F_k, h, w, r)
            e_q = self.heads(q[None].to(dtype), slice(j, j + 1))
            if k is None:  # hidden input: the same embedding, split into the two sides' frames
                e = e_q.view(1, Fr, h, w, -1)
                return (e, e) if anchor is None else (e[:, anchor:], e[:, : anchor + 1])
            e_k = self.heads(k[None].to(dtype), slice(j, j + 1), self.d_head)  # GQA keys as they come
            return e_q.view(1, len(q_map), h, w, -1), e_k.view(1, len(k_map), h, w, -1)

        def layer(j: int, q: torch.Tensor, k: torch.Tensor | None):  # embeddings, or (L_corr, L_depth) with a loss
            e = embed(j, q, k)
            return e if loss is None else loss(*e)

        # Without the LLM's checkpointing, each layer's head and loss run under their own checkpoint: only the
        # gathered q and k are kept for backward. Under it, the layer's checkpoint already covers them (the hook
        # runs inside the layer), and an inner checkpoint would hold q and k alive until backward.
        llm_ckpt = getattr(self.vlm, "is_activation_checkpointing", False) and self.vlm.training
        ckpt = loss is not None and torch.is_grad_enabled() and not llm_ckpt
        outs = [None] * L

        def run(j: int, q: torch.Tensor, k: torch.Tensor | None, live: bool):
            res = checkpoint(layer, j, q, k, use_reentrant=False) if ckpt else layer(j, q, k)
            if live:
                outs[j] = res

        # Each layer's head (and loss) runs inside the forward, as soon as that layer's q and k exist: its
        # backward then comes when the LLM's backward reaches the layer, after the layers above have freed
        # their activations.
        self._pos, self._run, self._live = {"q": q_map.flatten(), "k": k_map.flatten()}, run, True
        try:
            out = self.vlm(**inputs, use_cache=False)
        finally:
            self._live, self._cap = False, {}
        if not llm_ckpt:
            self._run = None  # nothing will replay
        return out, outs

    def forward(self, inputs: dict, token_map: torch.Tensor | None = None, anchor: int | None = None, loss=None):
        """inputs: one sample (batch 1) from Processor; token_map (F, h, w) its visual-token positions.
        loss: (e_q (1, F - anchor, h, w, r), e_k (1, anchor + 1, h, w, r)) of one layer -> (L_corr (1,), L_depth (1,)),
        e.g. partial(gasp_losses, targets=pair_targets(sample, ...), tau=..., q_offset=anchor). Only what the pairs
        (anchor, f) read is embedded: the q side of frames anchor..F-1, the k side of frames 0..anchor.
        Returns (stock output, L_corr (L,), L_depth (L,)); without token_map the stock forward alone
        (instruction items) and (stock output, None, None). Embeddings for the probe: embed()."""
        if token_map is None:
            return self.vlm(**inputs, use_cache=False), None, None
        if loss is None or anchor is None:
            raise ValueError("GASP.forward with a token_map needs anchor and loss (train); use GASP.embed for embeddings")
        out, outs = self._forward(inputs, token_map, anchor, loss)
        return out, *(torch.cat(t) for t in zip(*outs))

    def embed(self, inputs: dict, token_map: torch.Tensor):
        """The heads' embeddings of every frame on both sides (the probe): (stock output, e_q (L, F, h, w, r),
        e_k (L, F, h, w, r))."""
        out, outs = self._forward(inputs, token_map, None, None)
        return out, *(torch.cat(t) for t in zip(*outs))


def freeze_and_lora(vlm: nn.Module, lora_rank: int = 0, train_vision: bool = False) -> nn.Module:
    """Freeze the vision tower and projector (default); with lora_rank > 0, wrap the LLM linears
    with peft LoRA (everything else frozen). Returns the model to train (a PeftModel under LoRA)."""
    for name, p in vlm.named_parameters():
        p.requires_grad = train_vision or "language_model" in name or "lm_head" in name
    if lora_rank <= 0:
        return vlm
    from peft import LoraConfig, get_peft_model
    # Assumption: LoRA on all LLM linears with alpha = 2 * rank (LLaVA's recipe); the paper gives only the rank.
    cfg = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                     target_modules=r".*language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")
    return get_peft_model(vlm, cfg)


def bare_vlm(model: nn.Module) -> nn.Module:
    """The stock model inside GASP / DDP / peft wrappers, LoRA merged."""
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "vlm", model)  # GASP: its heads stay behind
    if hasattr(model, "merge_and_unload"):  # peft
        model = model.merge_and_unload()
    return model


def export(model: nn.Module, processor: Processor, out_dir: str) -> str:
    """Save a stock checkpoint: heads dropped, LoRA merged, plus tokenizer / image processor."""
    vlm = bare_vlm(model)
    vlm.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- native Q-K (probe, G8)

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@torch.no_grad()
def native_qk(vlm: nn.Module, inputs: dict, token_map: torch.Tensor, fn, layers=None, run=None, rotary: bool = True):
    """G8 input: for every layer l (or those listed), call fn(l, q, k) with the layer's own
    q (F, h*w, H, d_h) and k (F, h*w, H, d_h) of the visual tokens, rotary / M-RoPE applied exactly as
    its attention does, keys repeated over query heads (GQA). Called inside the forward, one layer at
    a time, so no (layers x tokens x tokens) tensor is ever held. `run` replaces the plain forward
    (e.g. a GASP forward, so the heads are read in the same pass); its result is returned.
    rotary=False: q and k before the rotary embedding (a diagnostic of what M-RoPE costs the match, not G8)."""
    blocks, tc = llm_layers(vlm), text_config(vlm)
    H = tc.num_attention_heads
    d_h = tc.hidden_size // H
    layers = range(len(blocks)) if layers is None else layers
    pos, Fr = token_map.flatten(), token_map.shape[0]
    state, handles = {}, []

    def rotate(x, cos, sin):  # x (T, H, d_h); cos, sin (T, d_h)
        return x * cos[:, None] + rotate_half(x) * sin[:, None]

    def on_rotary(module, args, out):
        state["cos"], state["sin"] = out[0][0, pos].float(), out[1][0, pos].float()  # (T, d_h)

    def on_q(module, args, out):
        state["q"] = out[0, pos].float().view(len(pos), H, d_h)

    def on_k(l):
        def hook(module, args, out):
            k = repeat_kv(out[0, pos].float(), H, d_h).view(len(pos), H, d_h)
            q = state.pop("q")
            if rotary:
                q, k = rotate(q, state["cos"], state["sin"]), rotate(k, state["cos"], state["sin"])
            fn(l, q.view(Fr, -1, H, d_h), k.view(Fr, -1, H, d_h))
        return hook

    handles.append(find_module(vlm, "language_model.rotary_emb").register_forward_hook(on_rotary))
    for l in layers:
        handles.append(blocks[l].self_attn.q_proj.register_forward_hook(on_q))
        handles.append(blocks[l].self_attn.k_proj.register_forward_hook(on_k(l)))
    try:
        return run() if run is not None else vlm(**inputs, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
