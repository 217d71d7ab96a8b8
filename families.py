"""Model families: one small adapter per VLM family, the only place that knows a family's token layout.

A family says how frames become LLM tokens and where GASP reads them:
  * layout: "images" (every frame one image, `<|vision_start|><|image_pad|>*n<|vision_end|>` each: Qwen3-VL) or
    "video" (all frames one run: `<|video_pad|>` for Qwen2-VL / Qwen2.5-VL, `<video>` for LLaVA), and the
    placeholder token the stock processor expands; patches: Qwen's patchified pixels with a (t, h, w) grid;
  * newline: placeholder positions after the last frame's grid that carry no frame token (LLaVA-OneVision
    appends one `image_newline` to a video): the token map skips them;
  * the token grid and pixels per token (token_px), and the frame size that gives whole tokens;
  * pixel normalisation, the tokenizer style and chat template of its tiny random-init model, the stock
    (pillow) image processor its checkpoints ship, and the tiny config of its real transformers class.
Where the heads read q and k is found on the attention module (q_norm / k_norm if present, else q_proj /
k_proj: model.qk_modules), and the probe reads what the attention function receives, for every family.

Also here: `build_tokenizer`, `tiny_config`, `build_tiny`, the random-init tiny models of the real classes (with
the family's stock processor files) that the tests and the embedded default run on; model.py re-exports them.

Adding a family: one Family entry in FAMILIES (and its test in tests/test_model.py), nothing else.

| family           | frames as   | tokens per frame             | px per token           | q/k read at        |
|------------------|-------------|------------------------------|------------------------|--------------------|
| qwen2_vl         | one video   | (H/28)(W/28)                 | 28 (patch 14, merge 2) | q_proj / k_proj    |
| qwen2_5_vl       | one video   | (H/28)(W/28)                 | 28                     | q_proj / k_proj    |
| qwen3_vl         | image list  | (H/32)(W/32)                 | 32 (patch 16, merge 2) | q_norm / k_norm    |
| llava_next_video | one video   | (S/14/2)² (2x2 avg pool)     | 28 at S = 336          | q_proj / k_proj    |
| llava_onevision  | one video   | ⌈S/14/2⌉² (bilinear), +1 newline after the last frame | 27 at S = 384 | q_proj / k_proj |

Qwen2-VL and Qwen2.5-VL take the frames as one video in which every frame is repeated to fill a temporal
patch (t = 2): every token belongs to one frame (the stock video path merges two different frames into one
token), and the frames get the M-RoPE ids of a video: spatial ids shared by all frames, the temporal id one
step a frame. Assumption (ours): this is the paper's multi-frame setting (video input, as on VSI-Bench).
As an image list every frame would shift all three ids by max(h, w) + 2, so a point's true match in a frame
7 steps back sat 126 positions away on every rotary axis (measured on the embedded default: native Q-K PCK@2
0.76 as images, 0.85 when the same q and k were compared before M-RoPE, 0.84 as a video). Qwen3-VL places
every frame of a video like an image (its own ids after the previous frame's, with timestamp text between),
so it keeps the image list. Qwen3-VL's DeepStack adds vision features to the first LLM layers' visual
positions; the heads stay one per LLM layer.
LLaVA-OneVision takes frames as a video, not an image list. Assumption (ours): the video path is how
the model was trained on video (LLaVA-Video-178K), it gives each frame one regular grid (2x2-pooled SigLIP
patches, 196 tokens at 384 px) with a single newline after the last frame; the image path tiles every
frame with anyres (a base view plus crops, a newline per row, 729+ tokens each), several grids per frame.

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: Qwen2-VL arXiv 2409.12191, Qwen2.5-VL arXiv 2502.13923, Qwen3-VL (github.com/QwenLM/Qwen3-VL),
LLaVA-NeXT-Video (llava-vl.github.io/blog/2024-04-30-llava-next-video), LLaVA-OneVision arXiv 2408.03326.
"""

import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import transformers

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP / Qwen3-VL normalisation
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]

# Chat templates of the tiny models (and of a tokenizer that ships none), written after the families' own.
QWEN_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN3_TEMPLATE = QWEN_TEMPLATE.replace(
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}", "")  # Qwen3-VL has no default system turn
LLAVA_VIDEO_TEMPLATE = (  # llava-hf LLaVA-NeXT-Video: "USER: <video>\n{text} ASSISTANT: {answer} "
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() + ': ' }}{% endif %}"
    "{% for c in m['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'video' %}<video>\n{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
ONEVISION_TEMPLATE = (  # llava-hf LLaVA-OneVision: "<|im_start|>user <video>\n{text}<|im_end|>..."
    "{% for m in messages %}<|im_start|>{{ m['role'] + ' ' }}"
    "{% for c in m['content'] if c['type'] == 'image' %}<image>{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'video' %}<video>{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ '\n' + c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass(frozen=True)
class Family:
    layout: str  # "images": one image per frame | "video": the frames as one video
    placeholder: str  # token the chat template writes and the stock processor repeats per visual token
    placeholder_id: str  # config attribute holding its id
    grid: Callable  # (config, (H, W)) -> (h, w) LLM tokens per frame
    token_px: Callable  # config -> pixels per token along each axis (the token pitch)
    frame_size: Callable  # (config, target px) -> (H, W) giving whole tokens
    mean_std: tuple  # pixel normalisation (overridden by the checkpoint's preprocessor_config.json)
    template: str  # chat template of the tiny model
    tokenizer: str  # "byte_level" (Qwen, Qwen2) | "metaspace" (Llama / Vicuna SentencePiece)
    special: list  # special tokens of the tiny tokenizer
    tiny: Callable  # (text dict, tokenizer, vision_layers, vision_hidden) -> config of the real class
    image_processor: Callable  # config -> the stock pillow image processor its checkpoints ship
    newline: int = 0  # placeholder positions after the last frame that carry no frame token
    patches: bool = False  # frames patchified by Qwen's image processor, with a (t, h, w) grid per image / video
    seconds_per_frame: float | None = None  # second_per_grid_ts of a frame-per-grid video (Qwen2.5-VL's M-RoPE)


# ----------------------------------------------------------------------------- Qwen (a video of repeated frames)

def _qwen_px(config) -> int:
    return config.vision_config.patch_size * config.vision_config.spatial_merge_size


def _qwen_size(config, target: int) -> tuple[int, int]:  # any multiple of the token pitch
    px = _qwen_px(config)
    side = max(px, round(target / px) * px)
    return side, side


def _qwen_grid(config, size) -> tuple[int, int]:
    return size[0] // _qwen_px(config), size[1] // _qwen_px(config)


def _qwen_ids(tid) -> dict:
    return dict(image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
                vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))


def _qwen_text(text: dict, tid, interleaved: bool = False) -> dict:
    d_h = text["head_dim"]
    section = text.pop("mrope_section", None) or [d_h // 8, d_h // 8 * 3 // 2, d_h // 8 * 3 // 2]  # sums to d_h/2
    rope = dict(rope_type="default", mrope_section=section, rope_theta=text.pop("rope_theta", 1e6))
    if interleaved:
        rope["mrope_interleaved"] = True
    return dict(text, rope_parameters=rope, bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"),
                pad_token_id=tid("<|endoftext|>"))


def _whole_heads(text: dict) -> dict:
    if text["head_dim"] * text["num_attention_heads"] != text["hidden_size"]:
        raise ValueError("Qwen2-VL / Qwen2.5-VL attention takes head size = hidden / heads; leave head_dim out")
    return text


def _qwen2_vl_tiny(text, tid, vision_layers, vision_hidden):
    text = _whole_heads(text)
    vision = dict(depth=vision_layers, embed_dim=vision_hidden, hidden_size=text["hidden_size"], num_heads=2,
                  mlp_ratio=2)
    return transformers.Qwen2VLConfig(text_config=_qwen_text(text, tid), vision_config=vision, **_qwen_ids(tid))


def _qwen2_5_vl_tiny(text, tid, vision_layers, vision_hidden):
    text = _whole_heads(text)
    vision = dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
                  out_hidden_size=text["hidden_size"], fullatt_block_indexes=[vision_layers - 1], window_size=112,
                  tokens_per_second=2)  # the released checkpoints' value
    return transformers.Qwen2_5_VLConfig(text_config=_qwen_text(text, tid), vision_config=vision, **_qwen_ids(tid))


def _qwen3_vl_tiny(text, tid, vision_layers, vision_hidden):
    # DeepStack: features of the first vision layers are added to the first LLM layers' visual positions.
    vision = dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
                  out_hidden_size=text["hidden_size"], patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  deepstack_visual_indexes=list(range(min(2, vision_layers))), num_position_embeddings=576)
    return transformers.Qwen3VLConfig(text_config=_qwen_text(text, tid, interleaved=True), vision_config=vision,
                                      **_qwen_ids(tid))


def _qwen_image_processor(mean, std):
    def make(config):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        v, px = config.vision_config, _qwen_px(config)
        return Qwen2VLImageProcessorPil(  # the stock settings: resizing on, 4..16384 tokens per image
            do_resize=True, patch_size=v.patch_size, merge_size=v.spatial_merge_size,
            temporal_patch_size=v.temporal_patch_size, image_mean=list(mean), image_std=list(std),
            size={"shortest_edge": 4 * px * px, "longest_edge": 16384 * px * px})
    return make


def _qwen(template, tiny, mean_std, video: bool, seconds_per_frame: float | None = None):
    pad, pad_id = ("<|video_pad|>", "video_token_id") if video else ("<|image_pad|>", "image_token_id")
    return Family(layout="video" if video else "images", placeholder=pad, placeholder_id=pad_id, grid=_qwen_grid,
                  token_px=_qwen_px, frame_size=_qwen_size, mean_std=mean_std, template=template,
                  tokenizer="byte_level", special=QWEN_SPECIAL, tiny=tiny,
                  image_processor=_qwen_image_processor(*mean_std), patches=True, seconds_per_frame=seconds_per_frame)


# ----------------------------------------------------------------------------- LLaVA (one video)

def _llava_pooled(config) -> int:
    """Tokens per frame side: the vision tower's patch grid after the video pooling."""
    n = config.vision_config.image_size // config.vision_config.patch_size
    if config.model_type == "llava_onevision":
        return math.ceil(n / 2)  # bilinear interpolation to half size
    return n // config.spatial_pool_stride  # average pooling


def _llava_px(config) -> float:
    """Token pitch: the patches a pooled token spans (OneVision at 384 px: 27 patches -> 14 tokens, 27 px each;
    the last 6 px of the frame fall outside every patch)."""
    v = config.vision_config
    return v.patch_size * (v.image_size // v.patch_size) / _llava_pooled(config)


def _llava_size(config, target: int) -> tuple[int, int]:  # the vision tower's fixed input size
    return config.vision_config.image_size, config.vision_config.image_size


def _llava_grid(config, size) -> tuple[int, int]:
    if tuple(size) != _llava_size(config, 0):
        raise ValueError(f"{config.model_type} takes frames of {_llava_size(config, 0)} px, not {tuple(size)}")
    n = _llava_pooled(config)
    return n, n


def _llava_next_video_tiny(text, tid, vision_layers, vision_hidden):
    text = dict(text, model_type="llama", bos_token_id=tid("<s>"), eos_token_id=tid("</s>"), pad_token_id=tid("</s>"))
    text.pop("mrope_section", None), text.pop("rope_theta", None)
    vision = dict(model_type="clip_vision_model", hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                  num_hidden_layers=vision_layers, num_attention_heads=2, image_size=224, patch_size=14,
                  projection_dim=text["hidden_size"])
    return transformers.LlavaNextVideoConfig(text_config=text, vision_config=vision,
                                             video_token_index=tid("<video>"), image_token_index=tid("<image>"),
                                             image_grid_pinpoints=[[224, 448], [448, 224], [448, 448]])  # = its processor's


def _llava_onevision_tiny(text, tid, vision_layers, vision_hidden):
    text = dict(text, model_type="qwen2", bos_token_id=None, eos_token_id=tid("<|im_end|>"),
                pad_token_id=tid("<|endoftext|>"))
    text.pop("mrope_section", None)
    text["rope_parameters"] = dict(rope_type="default", rope_theta=text.pop("rope_theta", 1e6))
    vision = dict(model_type="siglip_vision_model", hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                  num_hidden_layers=vision_layers, num_attention_heads=2, image_size=224, patch_size=14)
    return transformers.LlavaOnevisionConfig(text_config=text, vision_config=vision, video_token_index=tid("<video>"),
                                             image_token_index=tid("<image>"), vision_feature_layer=-1,
                                             vision_feature_select_strategy="full",
                                             image_grid_pinpoints=[[224, 448], [448, 224], [448, 448]])  # = its processor's


def _llava_next_image_processor(config):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    s = config.vision_config.image_size
    return LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                      image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
                                      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def _llava_onevision_image_processor(config):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
    s = config.vision_config.image_size
    return LlavaOnevisionImageProcessorPil(size={"height": s, "width": s},
                                           image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
                                           image_mean=list(HALF), image_std=list(HALF))


FAMILIES = {
    # Assumption: frames 0.5 s apart (Qwen2.5-VL's default 2 fps sampling): one M-RoPE temporal step per frame
    # at the released checkpoints' tokens_per_second = 2.
    "qwen2_5_vl": _qwen(QWEN_TEMPLATE, _qwen2_5_vl_tiny, (CLIP_MEAN, CLIP_STD), video=True, seconds_per_frame=0.5),
    "qwen2_vl": _qwen(QWEN_TEMPLATE, _qwen2_vl_tiny, (CLIP_MEAN, CLIP_STD), video=True),
    "qwen3_vl": _qwen(QWEN3_TEMPLATE, _qwen3_vl_tiny, (HALF, HALF), video=False),
    "llava_next_video": Family(
        layout="video", placeholder="<video>", placeholder_id="video_token_index", grid=_llava_grid,
        token_px=_llava_px, frame_size=_llava_size, mean_std=(CLIP_MEAN, CLIP_STD), template=LLAVA_VIDEO_TEMPLATE,
        tokenizer="metaspace", special=["<unk>", "<s>", "</s>", "<image>", "<video>"], tiny=_llava_next_video_tiny,
        image_processor=_llava_next_image_processor),
    "llava_onevision": Family(
        layout="video", placeholder="<video>", placeholder_id="video_token_index", grid=_llava_grid,
        token_px=_llava_px, frame_size=_llava_size, mean_std=(HALF, HALF), template=ONEVISION_TEMPLATE,
        tokenizer="byte_level", special=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        tiny=_llava_onevision_tiny, image_processor=_llava_onevision_image_processor, newline=1),
}
SUPPORTED = tuple(FAMILIES)


def family(config) -> Family:
    """The adapter of a model config; one clear error naming the supported families otherwise."""
    kind = getattr(config, "model_type", config)
    if kind not in FAMILIES:
        raise ValueError(f"model type {kind!r} has no visual-token map here; supported: {', '.join(SUPPORTED)}. "
                         f"Add a Family entry to families.py.")
    return FAMILIES[kind]


# ----------------------------------------------------------------------------- tiny random-init models

def build_tokenizer(kind: str, vocab_size: int = 512):
    """A small tokenizer made offline with `tokenizers`, of the family's kind and with its special tokens and
    chat template: byte-level BPE (Qwen, Qwen2) or SentencePiece-style Metaspace BPE with a BOS (Llama/Vicuna)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    fam = family(kind)
    corpus = ["These are frames of a video. Which point in the last frame matches the marked point?",
              "Answer with the option's letter from the given choices directly. A B C D 0 1 2 3 4 5 6 7 8 9",
              "USER: ASSISTANT: system user assistant You are a helpful assistant. yes no left right\n"] * 4
    if fam.tokenizer == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        alphabet = sorted(set("".join(corpus).replace(" ", "▁")) | {"▁", "\n"})
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=fam.special,
                                                        initial_alphabet=alphabet, show_progress=False))
    if fam.tokenizer == "metaspace":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        names = dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    else:
        names = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    out = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    out.chat_template = fam.template
    return out


def tiny_config(kind: str = "qwen2_5_vl", tokenizer=None, layers: int = 4, hidden: int = 128, heads: int = 2,
                kv_heads: int = 2, vision_layers: int = 2, vision_hidden: int = 64, intermediate: int | None = None,
                head_dim: int | None = None, mrope_section: list[int] | None = None, rope_theta: float = 1e6):
    """A few-MB config of the real class: same code paths as the 7B models, random weights. intermediate
    (default 2 x hidden), head_dim (default hidden / heads), mrope_section and rope_theta let 7B-shaped layers
    be built (Qwen2.5-VL-7B: hidden 3584, heads 28, kv_heads 4, intermediate 18944, head_dim 128).
    The defaults are the embedded default's model. Two heads of 64 (as Qwen's head size is 128, M-RoPE
    sections in the same proportions) instead of four of 32 with 2 KV heads: native Q-K PCK@2 after the
    demo 0.76 vs 0.66 (measured; M-RoPE scrambles a quarter of each head's dimensions across frames)."""
    tokenizer = tokenizer or build_tokenizer(kind)
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=32768, head_dim=head_dim or hidden // heads, mrope_section=mrope_section,
                rope_theta=rope_theta)
    return family(kind).tiny(text, tokenizer.convert_tokens_to_ids, vision_layers, vision_hidden)


def build_tiny(out_dir: str, kind: str = "qwen2_5_vl", seed: int = 0, dtype=None, **config_kwargs) -> str:
    """Write a tiny random-init checkpoint of the real class (weights in `dtype`, default float32) with realistic
    processor files (the family's stock image processor with resizing on, tokenizer, chat template) to out_dir
    (kept if out_dir already holds the same architecture; rebuilt if it holds another, e.g. an older default)."""
    tokenizer = build_tokenizer(kind)
    config = tiny_config(kind, tokenizer, **config_kwargs)
    if os.path.exists(os.path.join(out_dir, "config.json")):
        keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size")
        old_cfg = transformers.AutoConfig.from_pretrained(out_dir)
        old, new = (getattr(c, "text_config", c) for c in (old_cfg, config))
        same = [getattr(old, k, None) for k in keys] == [getattr(new, k, None) for k in keys]
        stock_files = os.path.exists(os.path.join(out_dir, "chat_template.jinja"))  # older tiny folders lack them
        if same and stock_files and old_cfg.model_type == kind and old_cfg.dtype == (dtype or torch.float32):
            return out_dir
        print(f"{out_dir}: holds another tiny model (architecture, dtype or processor files); rebuilding it")
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageTextToText.from_config(config).to(dtype or torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # with its chat template
    family(config).image_processor(config).save_pretrained(out_dir)
    return out_dir
