"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: frames patchified by Qwen's image processor, 2x2 patches merged per token.

Training: Qwen2-VL and Qwen2.5-VL take the frames as one video of repeated frames, Qwen3-VL as an image list
(families/__init__.py says why). Official inputs: every image aspect-kept by smart_resize within the harness's
min/max pixels, one <|vision_start|><|image_pad|><|vision_end|> per image; VSI-Bench and STI-Bench in VIDEO
mode, two consecutive frames per temporal patch, one <|video_pad|> block of t*h*w / merge^2 tokens. Qwen3-VL:
lmms-eval's qwen3_vl image settings (BLINK, MMSI-Bench); where no harness setting is pinned, official_gap says
what is missing.

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: Qwen2-VL arXiv 2409.12191, Qwen2.5-VL arXiv 2502.13923, Qwen3-VL (github.com/QwenLM/Qwen3-VL);
thinking-in-space @51e089c lmms_eval/models/qwen2_5_vl.py; All-Angles-Bench @0e1d210 VLMEvalkit/vlmeval/config.py;
lmms-eval @0e1f330 lmms_eval/models/simple/qwen3_vl.py; STI-Bench @082810f opensource_test.py.
"""

import transformers

from .family import CLIP_MEAN, CLIP_STD, HALF, Family, Feed

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

# The official harnesses' Qwen2/2.5-VL inputs: (min_pixels, max_pixels) per image, or per frame of a video.
LMMS_QWEN2_5 = Feed("images", "smart", (256 * 28 * 28, 1605632),
                    harness="lmms-eval qwen2_5_vl defaults (min_pixels 256*28*28, max_pixels 1605632)")
QWEN_OFFICIAL = {
    "vsibench": Feed("video", "smart", (256 * 28 * 28, 602112), merge_frames=True,
                     harness="thinking-in-space / lmms-eval qwen2_5_vl"),
    "allangles": Feed("images", "smart", (1280 * 28 * 28, 16384 * 28 * 28),
                      harness="All-Angles VLMEvalKit fork @0e1d210, vlmeval/config.py"),
    "blink": LMMS_QWEN2_5,
    "mmsi": LMMS_QWEN2_5,  # lmms-eval's mmsi_bench task through the same wrapper
    # opensource_test.py: qwen-vl-utils video, max_pixels 360*420 per frame, its default VIDEO_MIN_PIXELS
    "stibench": Feed("video", "smart", (128 * 28 * 28, 360 * 420), merge_frames=True,
                     harness="STI-Bench opensource_test.py @082810f (qwen-vl-utils video, max_pixels 360*420)"),
}
# SpaceVista's harness sends its 16 frames to a served model: the model side's pixel bounds are not in it.
SPACEVISTA_GAP = ("its harness (SpaceVista eval/evaluate_api.py @920a9b7) sends the frames to a served model through "
                  "an API and pins no image size or pixel bounds")
QWEN_GAPS = {"spacevista": SPACEVISTA_GAP}

# Qwen3-VL: lmms-eval qwen3_vl @0e1f330 (lmms_eval/models/simple/qwen3_vl.py): min_pixels 256*28*28, max_pixels
# 1605632 per image, smart_resize to multiples of 32 (process_vision_info image_patch_size=16), and a system turn
# "You are a helpful assistant." (Qwen3-VL's template has no default one).
LMMS_QWEN3 = Feed("images", "smart", (256 * 28 * 28, 1605632), system="You are a helpful assistant.",
                  harness="lmms-eval qwen3_vl @0e1f330 defaults (min_pixels 256*28*28, max_pixels 1605632, system "
                          "turn)")
QWEN3_OFFICIAL = {"blink": LMMS_QWEN3, "mmsi": LMMS_QWEN3}
QWEN3_GAPS = {
    "vsibench": "lmms-eval qwen3_vl's video path (fps metadata, timestamp text between frames) is not rebuilt here",
    "allangles": "the All-Angles VLMEvalKit fork @0e1d210 has no Qwen3-VL setting (it predates the model)",
    "stibench": "STI-Bench's opensource_test.py @082810f runs Qwen2.5-VL only",
    "spacevista": SPACEVISTA_GAP}


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


def _qwen(name, template, tiny, mean_std, video: bool, seconds_per_frame=None, official=None, gap=None):
    return Family(name=name, layout="video" if video else "images", image_token="image_token_id",
                  video_token="video_token_id", token_grid=_qwen_grid, token_px=_qwen_px, frame_size=_qwen_size,
                  mean_std=mean_std, template=template, tokenizer="byte_level", special=QWEN_SPECIAL, tiny=tiny,
                  image_processor=_qwen_image_processor(*mean_std), patches=True,
                  seconds_per_frame=seconds_per_frame, official=official or {}, official_gap=gap or {})


# Assumption: frames of unknown rate are 0.5 s apart (Qwen2.5-VL's default 2 fps sampling): one M-RoPE temporal
# step per frame at the released checkpoints' tokens_per_second = 2; a temporal patch of two frames is 1 s.
QWEN2_5_VL = _qwen("Qwen2.5-VL", QWEN_TEMPLATE, _qwen2_5_vl_tiny, (CLIP_MEAN, CLIP_STD), video=True,
                   seconds_per_frame=0.5, official=QWEN_OFFICIAL, gap=QWEN_GAPS)
QWEN2_VL = _qwen("Qwen2-VL", QWEN_TEMPLATE, _qwen2_vl_tiny, (CLIP_MEAN, CLIP_STD), video=True,
                 official=QWEN_OFFICIAL, gap=QWEN_GAPS)
QWEN3_VL = _qwen("Qwen3-VL", QWEN3_TEMPLATE, _qwen3_vl_tiny, (HALF, HALF), video=False, official=QWEN3_OFFICIAL,
                 gap=QWEN3_GAPS)
