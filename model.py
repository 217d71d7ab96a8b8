"""A stock Hugging Face VLM with GASP's training-only correspondence heads (G1) and the native Q-K read (G8).

    G1  e = normalize(W2 · GELU(W1 · v + b1) + b2), v = the layer's pre-rotary q (or k) of a visual token
    G8  A = softmax(q_later · k_earlierᵀ / sqrt(d_h)): the layer's own attention of a later frame's tokens
        over an earlier frame's, with the q and k the attention function receives

What lives here:
  * `Processor` (from families/inputs.py, the one input builder of training, the probe and evaluation):
    frames + text -> model inputs, with the per-family layout (image list or video, pooling, trailing newline,
    token pitch) read from families/ (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-NeXT-Video, LLaVA-OneVision,
    InternVL), and its per-frame visual-token map: sequence positions of every frame's (h, w) token grid;
  * `build` (the model as training builds it) and `load`, the one loader: a stock model or a training checkpoint
    (runtime/checkpoint.py reads it), rebuilt with the run's own settings;
  * `GASP`: wraps the stock model without changing its forward; forward hooks on each supervised layer's
    q_proj / k_proj (q_norm / k_norm where the family has them; input_layernorm for head_input="hidden") read
    the visual tokens' q and k in the one training forward pass and run that layer's head and loss at once
    (replayed when the LLM's activation checkpointing recomputes the layer);
  * `native_qk`: q and k exactly as each layer's attention function receives them (q/k norm, rotary / M-RoPE
    applied by the model), read through a function registered with transformers' AttentionInterface (G8);
  * freezing, LoRA through peft, and `export`: the bare VLM (heads dropped, LoRA merged) saved in the base
    model's dtype with the base model's processor files copied unchanged, loadable with the stock classes;
  * `build_tiny`, `tiny_config`, `build_tokenizer` (from families/): random-init tiny models of the real
    classes with stock processor files, for tests and the embedded default.

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: Qwen2.5-VL (arXiv 2502.13923), LLaVA-NeXT-Video (llava-vl.github.io/blog/2024-04-30-llava-next-video),
GASP arXiv 2605.30231; transformers' AttentionInterface (huggingface.co/docs/transformers/attention_interface).
"""

import importlib
import json
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import transformers
from torch.utils.checkpoint import checkpoint

# The input builder and the tiny models live in families/; re-exported here as this module's API.
from families import (PROCESSOR_FILES, SUPPORTED, Processor, answer_logits_only, build_tiny,  # noqa: F401
                      build_tokenizer, check_supported, family, frame_size, read_file, tiny_config, token_px)
from heads import CorrespondenceHeads
import runtime.checkpoint

# Notation: F frames, (h, w) token grid per frame, T = F*h*w visual tokens, L supervised layers,
# H query heads, d_h head size, S sequence length, B batch.

PROMPT = "These are frames of a video."  # the short generic prompt of geometry samples (no answer, no L_LM)


ATTENTION = ("sdpa", "eager", "flash_attention_2")


def as_dtype(dtype) -> torch.dtype:
    """'bfloat16' or torch.bfloat16 -> torch.bfloat16."""
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _stock(path: str, device, dtype, size, attn_implementation, device_map=None, benchmark=None):
    """A stock checkpoint (HF id or folder, read offline if cached) -> (model in eval mode, Processor).
    device_map "auto": the layers spread over the visible GPUs by accelerate (inference only; `device` unused)."""
    config = transformers.AutoConfig.from_pretrained(path)
    check_supported(config)
    if attn_implementation not in (None, *ATTENTION):
        raise ValueError(f"attn_implementation {attn_implementation!r}: use {', '.join(ATTENTION)}")
    # device_map needs accelerate; without it from_pretrained raises a ValueError naming `pip install accelerate`
    vlm = transformers.AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, device_map=device_map)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    vlm = vlm if device_map is not None else vlm.to(device)
    return vlm.eval(), Processor(vlm.config, tokenizer, size, folder=path, benchmark=benchmark)


def build(model: str, device="cpu", dtype: str = "float32", attn_implementation: str | None = None, size: int = 448,
          layers: str = "all", lora_rank: int = 0, train_vision: bool = False, heads: bool = True,
          head_input: str = "qk", embed_dim: int = 256, grad_ckpt: bool = False):
    """The model as training builds it -> (vlm, processor, net). vlm: the stock model (LoRA injected in place);
    net: what the optimizer trains: GASP (the heads on `layers`) when `heads`, else the (peft) VLM.
    Frozen weights in `dtype`; trained parameters in float32 (mixed precision: autocast in the loop).
    size: the frame side wanted, rounded to whole tokens (frame_size)."""
    config = transformers.AutoConfig.from_pretrained(model)
    vlm, proc = _stock(model, "cpu", as_dtype(dtype), frame_size(config, size), attn_implementation)
    layer_ids = parse_layers(layers, len(llm_layers(vlm)))
    if grad_ckpt:
        vlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    net = freeze_and_lora(vlm, lora_rank, train_vision)
    if heads:
        net = GASP(net, layer_ids, head_input, embed_dim)
    for p in net.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return vlm, proc, net.to(device)


def load(path: str, device="cpu", dtype: str | None = None, attn_implementation: str | None = None, size=None,
         device_map: str | None = None, benchmark: str | None = None):
    """The one loader of models: a stock model (HF id or folder; train.py's export/ is one) or a training checkpoint
    (checkpoint.pt, or the run folder holding it, any objective, LoRA or not) -> (vlm, processor, gasp, config).
    A checkpoint is rebuilt exactly as training built it (build, with the run's saved settings) with its trained
    weights restored: vlm has its LoRA active, gasp is the GASP module when the run trained heads (else None),
    config the run's settings. A stock model gives gasp None and config {"model": path}.
    dtype: 'bfloat16' | 'float16' | 'float32' (None: float32 for a stock model, the run's own for a checkpoint);
    attn_implementation: sdpa | eager | flash_attention_2 (None: transformers' default, or the run's own);
    size: (H, W) of the frames (None: the family's default, or the run's training size);
    device_map: "auto" spreads a stock model too large for one GPU over the visible GPUs (transformers'
    from_pretrained through accelerate; inference only, `device` unused), None puts it whole on `device`;
    benchmark: the processor builds that benchmark's official inputs (eval.py), so only what they need (e.g. an image
    branch in the chat template) is checked, not the training layout. Eval mode."""
    file = runtime.checkpoint.find(path)
    if file is None:
        vlm, proc = _stock(path, device, as_dtype(dtype or "float32"), size, attn_implementation, device_map,
                           benchmark)
        return vlm, proc, None, {"model": path}
    if device_map is not None:  # build() wraps LoRA and the heads around a model on one device
        raise ValueError(f"{file}: device_map {device_map!r} loads stock models only (an HF id or folder); a "
                         "training checkpoint is rebuilt on one device: export it (train.py's export/) or drop "
                         "--device-map")
    ckpt = runtime.checkpoint.read(file)
    dtype = str(as_dtype(dtype)).removeprefix("torch.") if dtype else ckpt["config"]["dtype"]
    ckpt["config"] = dict(ckpt["config"], dtype=dtype,
                          attn_implementation=attn_implementation or ckpt["config"].get("attn_implementation"))
    vlm, proc, net = rebuild(ckpt, file, device)
    return vlm.eval(), proc, net.eval() if isinstance(net, GASP) else None, ckpt["config"]


def rebuild(ckpt: dict, where: str, device="cpu"):
    """A read training checkpoint -> (vlm, processor, net) as training built them (build, with the run's saved
    settings; heads where the run trained them), its trained weights restored. net is what the optimizer trained:
    GASP, the peft model, or the VLM (export() takes it)."""
    saved = ckpt["config"]
    has_heads = any(n.startswith("heads.") for n in ckpt["weights"])
    vlm, proc, net = build(saved["model"], device, saved["dtype"], saved["attn_implementation"], saved["size"],
                           saved["layers"], saved["lora_rank"], saved["train_vision"], has_heads,
                           saved["head_input"], saved["embed_dim"])
    runtime.checkpoint.restore_weights(net, ckpt["weights"], where)
    return vlm, proc, net


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
        self.attn_dim = head_size(tc)  # attention head size: folds W1 onto GQA keys
        attn = [blocks[i].self_attn for i in self.layer_ids]
        d_in = tc.num_attention_heads * self.attn_dim if head_input == "qk" else tc.hidden_size
        self.heads = CorrespondenceHeads(len(self.layer_ids), d_in, r)
        q_weights = [getattr(a.q_proj, "base_layer", a.q_proj).weight for a in attn]  # base weight under LoRA
        self.heads.init_from_query_projections(q_weights, head_input)
        self._pos = None  # {"q": (T_q,), "k": (T_k,)} visual positions read by the hooks, None = idle
        self._on_layer = None  # (j, q, k, live) -> layer j's embeddings or losses: set during a GASP forward, kept for replay
        self._live = False  # True while a GASP forward runs; False in a checkpoint recomputation (replay)
        self._cap = {}  # the q capture of the layer running now, until its k arrives
        self._on_attention = None  # (j, q, k, live) -> layer j's attention loss (the --lambda-attn extension), during a forward
        self._attn_layer = {id(a): j for j, a in enumerate(attn)}  # attention module -> supervised layer j
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
            self._pos = self._on_layer = None

    def _hook(self, side: str, j: int):
        def hook(module, args, out):
            if self._pos is None or self._on_layer is None:
                return
            x = out[0, self._pos[side]].flatten(1)  # (T_side, d): visual tokens of sample 0 (q_norm: (T, H, d_h))
            self._cap[side] = x
            if side == "k" or self.head_input == "hidden":  # q has been computed before k
                # Under the LLM's activation checkpointing the layer is recomputed in backward and this hook
                # fires again with _live False: the same head (and loss) ops replay on the recomputed q and k,
                # so autograd finds the tensors it saved; their outputs are dropped.
                self._on_layer(j, self._cap.pop("q"), self._cap.pop("k", None), self._live)
        return hook

    def _read_attention(self, module, query, key):  # attention_reader callback: (B, H, S, d_h), (B, H_kv, S, d_h)
        j = self._attn_layer.get(id(module))
        if j is not None and self._pos is not None and self._on_attention is not None:
            self._on_attention(j, query[0, :, self._pos["q"]], key[0, :, self._pos["k"]], self._live)

    def _forward(self, inputs: dict, token_map: torch.Tensor, anchor: int | None, loss, attention=None):
        """One stock forward with layer j's head (and loss) run inside layer j. Returns (out, [result_j]),
        and [attn_j] with an attention loss (the extension)."""
        L, (Fr, h, w) = len(self.layer_ids), token_map.shape
        q_map, k_map = (token_map, token_map) if anchor is None else (token_map[anchor:], token_map[: anchor + 1])
        if self.head_input == "hidden":  # one capture of x_l serves both sides
            q_map = k_map = token_map

        def embed(j: int, q: torch.Tensor, k: torch.Tensor | None):  # layer j -> (1, F_q, h, w, r), (1, F_k, h, w, r)
            e_q = self.heads(q[None], slice(j, j + 1))
            if k is None:  # hidden input: the same embedding, split into the two sides' frames
                e = e_q.view(1, Fr, h, w, -1)
                return (e, e) if anchor is None else (e[:, anchor:], e[:, : anchor + 1])
            e_k = self.heads(k[None], slice(j, j + 1), self.attn_dim)  # GQA keys as they come
            return e_q.view(1, len(q_map), h, w, -1), e_k.view(1, len(k_map), h, w, -1)

        def layer(j: int, q: torch.Tensor, k: torch.Tensor | None):  # embeddings, or (L_corr, L_depth) with a loss
            e = embed(j, q, k)
            return e if loss is None else loss(*e)

        # Each layer's head and loss run under their own checkpoint: only the gathered q and k are kept for
        # backward. Under the LLM's checkpointing too (nested): the layer's checkpoint alone would rebuild the
        # head's saved tensors together with the layer's, so they would be alive while the layer's MLP backward
        # runs (SFT's peak); the inner one rebuilds them only when the loss's backward comes.
        llm_ckpt = getattr(self.vlm, "is_activation_checkpointing", False) and self.vlm.training
        ckpt = loss is not None and torch.is_grad_enabled()
        outs, attns = [None] * L, [None] * L

        def runner(fn, store: list):  # (j, q, k, live) -> fn(j, q, k), kept in store[j] unless a replay
            def run(j: int, q: torch.Tensor, k: torch.Tensor | None, live: bool):
                res = checkpoint(fn, j, q, k, use_reentrant=False) if ckpt else fn(j, q, k)
                if live:
                    store[j] = res
            return run

        on_layer = runner(layer, outs)
        on_attention = runner(lambda j, q, k: attention(q, k), attns)  # post-rotary q, k of layer j

        # Each layer's head (and loss) runs inside the forward, as soon as that layer's q and k exist: its
        # backward then comes when the LLM's backward reaches the layer, after the layers above have freed
        # their activations.
        self._pos, self._on_layer, self._live = {"q": q_map.flatten(), "k": k_map.flatten()}, on_layer, True
        self._on_attention = on_attention if attention is not None else None
        try:
            with attention_reader(self.vlm, self._read_attention) if attention is not None else nullcontext():
                out = self.vlm(**inputs, use_cache=False)
        finally:
            self._live, self._cap = False, {}
        if not llm_ckpt:
            self._on_layer = self._on_attention = None  # nothing will replay
        return (out, outs) if attention is None else (out, outs, attns)

    def forward(self, inputs: dict, token_map: torch.Tensor | None = None, anchor: int | None = None, loss=None,
                attention=None):
        """inputs: one sample (batch 1) from Processor; token_map (F, h, w) its visual-token positions.
        loss: (e_q (1, F - anchor, h, w, r), e_k (1, anchor + 1, h, w, r)) of one layer -> (L_corr (1,), L_depth (1,)),
        e.g. partial(gasp_losses, targets=pair_targets(sample, ...), tau=..., q_offset=anchor). Only what the pairs
        (anchor, f) read is embedded: the q side of frames anchor..F-1, the k side of frames 0..anchor.
        Returns (stock output, L_corr (L,), L_depth (L,)); without token_map the stock forward alone
        (instruction items) and (stock output, None, None). Embeddings for the probe: embed().
        attention: (q (H, T_q, d_h), k (H_kv, T_k, d_h)) of one layer, as its attention receives them (rotary
        applied) -> (1,), e.g. partial(losses.attention_loss, ...) (the --lambda-attn extension); then L_attn (L,)
        is returned fourth."""
        if token_map is None:
            return self.vlm(**inputs, use_cache=False), None, None
        if loss is None or anchor is None:
            raise ValueError("GASP.forward with a token_map needs anchor and loss (train); use GASP.embed for embeddings")
        out, outs, *attns = self._forward(inputs, token_map, anchor, loss, attention)
        return out, *(torch.cat(t) for t in zip(*outs)), *(torch.cat(n) for n in attns)

    def embed(self, inputs: dict, token_map: torch.Tensor):
        """The heads' embeddings of every frame on both sides (the probe): (stock output, e_q (L, F, h, w, r),
        e_k (L, F, h, w, r))."""
        out, outs = self._forward(inputs, token_map, None, None)
        return out, *(torch.cat(t) for t in zip(*outs))


def freeze_and_lora(vlm: nn.Module, lora_rank: int = 0, train_vision: bool = False) -> nn.Module:
    """Freeze the vision tower and projector (default); with lora_rank > 0, wrap the LLM linears
    with peft LoRA (everything else frozen). Returns the model to train (a PeftModel under LoRA).
    LoRA weights are kept in float32 whatever the frozen weights' dtype (peft's autocast_adapter_dtype)."""
    if lora_rank < 0:
        raise ValueError(f"lora_rank {lora_rank}: use 0 (full LLM fine-tuning) or a positive LoRA rank")
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
    """Save a stock checkpoint: heads dropped, LoRA merged, weights in the base model's dtype (config.json of
    processor.folder; the model's own dtype without a folder), and the base model's processor, tokenizer,
    chat-template and generation files copied unchanged, so the stock Auto* classes load it as they load the base."""
    vlm = bare_vlm(model)
    base = json.loads(read_file(processor.folder, "config.json") or "{}")
    name = base.get("dtype") or base.get("torch_dtype") or base.get("text_config", {}).get("dtype")
    dtype = getattr(torch, name) if isinstance(name, str) else vlm.dtype
    kept = {}  # the trained values stay untouched in memory: cast copies for the save, restored after
    for p in vlm.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            kept[p] = p.data
            p.data = p.data.to(dtype)
    try:
        vlm.save_pretrained(out_dir)
    finally:
        for p, data in kept.items():
            p.data = data
    processor.save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- native Q-K (probe, G8)

_READERS = []  # the read callbacks of the attention_reader blocks now open


def _reading_attention(own: str):
    """An attention function that hands q and k to the open readers, then runs implementation `own`
    (for eager: the attention module's family's own eager_attention_forward)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, **kwargs):
        for read in _READERS:
            read(module, query, key)
        eager = importlib.import_module(type(module).__module__).eager_attention_forward
        stock = ALL_ATTENTION_FUNCTIONS.get_interface(own, eager)
        return stock(module, query, key, value, attention_mask, **kwargs)
    return attention


@contextmanager
def attention_reader(vlm: nn.Module, read):
    """Within the block, every LLM attention call first hands read(module, query, key) the exact q and k it
    attends with: query (B, H, S, d_h), key (B, H_kv, S, d_h), after q_norm / k_norm and rotary / M-RoPE, as
    the model computed them. A wrapping function registered with transformers' AttentionInterface is selected
    for the language model, then its own implementation (eager, sdpa, flash_attention_2) is restored."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
    tc = text_config(vlm)
    own = tc._attn_implementation or "eager"
    name = f"gasp_read_{own}"  # keeps "flash...2" in the name, so flash-specific paths stay the same
    AttentionInterface.register(name, _reading_attention(own))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[own])  # the same mask as the model's own
    tc._attn_implementation = name
    _READERS.append(read)
    try:
        yield
    finally:
        _READERS.remove(read)
        tc._attn_implementation = own


@torch.no_grad()
def native_qk(vlm: nn.Module, inputs: dict, token_map: torch.Tensor, fn, layers=None, forward=None,
              rotary: bool = True):
    """G8 input: for every layer l (or those listed), call fn(l, q, k) with the q (F, h*w, H, d_h) and
    k (F, h*w, H, d_h) of the visual tokens exactly as the layer's attention receives them (q_norm / k_norm,
    rotary / M-RoPE applied by the model itself), keys repeated over query heads (GQA). Called inside the
    forward, one layer at a time, so no (layers x tokens x tokens) tensor is ever held. `forward` replaces the
    plain forward (e.g. lambda: gasp.embed(...), so the heads are read in the same pass); its result is returned.
    rotary=False: q and k before the rotary embedding, where the heads read them (a diagnostic of what
    M-RoPE costs the match, not G8)."""
    blocks, tc = llm_layers(vlm), text_config(vlm)
    H, d_h = tc.num_attention_heads, head_size(tc)
    layers = set(range(len(blocks)) if layers is None else layers)
    pos, Fr = token_map.flatten(), token_map.shape[0]
    forward = forward if forward is not None else (lambda: vlm(**inputs, use_cache=False))

    def hand(l, q, k):  # q (T, H, d_h), k (T, H_kv, d_h)
        k = k.repeat_interleave(H // k.shape[1], dim=1)  # key head g serves query heads g*n .. g*n + n - 1
        fn(l, q.float().view(Fr, -1, H, d_h), k.float().view(Fr, -1, H, d_h))

    if rotary:
        layer_of = {id(b.self_attn): l for l, b in enumerate(blocks)}

        def read(module, query, key):  # (B, H, S, d_h), (B, H_kv, S, d_h)
            l = layer_of.get(id(module))
            if l in layers:
                hand(l, query[0, :, pos].transpose(0, 1), key[0, :, pos].transpose(0, 1))

        with attention_reader(vlm, read):
            return forward()
    state, handles = {}, []

    def on_q(module, args, out):
        state["q"] = out[0, pos].reshape(len(pos), H, d_h)

    def on_k(l):
        def hook(module, args, out):
            hand(l, state.pop("q"), out[0, pos].reshape(len(pos), -1, d_h))
        return hook

    for l in layers:
        q_mod, k_mod = qk_modules(blocks[l].self_attn)
        handles += [q_mod.register_forward_hook(on_q), k_mod.register_forward_hook(on_k(l))]
    try:
        return forward()
    finally:
        for hd in handles:
            hd.remove()
