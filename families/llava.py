"""LLaVA-NeXT-Video and LLaVA-OneVision: the frames as one video of fixed-size frames, pooled to a token grid.

Training: every frame squashed to the vision tower's input size. Official inputs (thinking-in-space's llava_vid
and llava_onevision models): LLaVA-NeXT-Video video frames resized on the shortest edge and centre-cropped, with
linear RoPE scaling to fit 32 frames, images through the stock LLaVA-NeXT anyres path; LLaVA-OneVision video
frames squashed to the SigLIP size, its images through the stock LlavaOnevisionProcessor's anyres_max_9 rule with
the conversation text of the harness (lmms-eval for BLINK and MMSI-Bench, VLMEvalKit for All-Angles).

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: LLaVA-NeXT-Video (llava-vl.github.io/blog/2024-04-30-llava-next-video), LLaVA-OneVision
arXiv 2408.03326; thinking-in-space @51e089c lmms_eval/models/llava_vid.py, llava_onevision.py; lmms-eval @077faa1
lmms_eval/models/simple/llava_onevision.py; LLaVA-NeXT llava/conversation.py (conv_qwen); VLMEvalKit @006aa29
vlmeval/vlm/llava/llava.py; transformers 5.24 models/llava_onevision/processing_llava_onevision.py.
"""

import math

import transformers

from .family import CLIP_MEAN, CLIP_STD, HALF, Family, Feed

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


NO_HARNESS = {"stibench": "STI-Bench's opensource_test.py @082810f runs Qwen2.5-VL only",
              "spacevista": "its harness (SpaceVista eval/evaluate_api.py @920a9b7) sends the frames to a served "
                            "model through an API and pins no image size"}
# Assumption: the video crop size is the CLIP input size (336 for llava-hf/LLaVA-NeXT-Video-7B-hf, whose processor
# config says shortest_edge 336, crop 336); one CLS token that the "default" feature strategy drops.
LLAVA_NEXT_IMAGES = Feed("images", "anyres", harness="the stock LLaVA-NeXT image path (LlavaNextProcessor)")
LLAVA_NEXT_VIDEO = Family(
    name="LLaVA-NeXT-Video", layout="video", image_token="image_token_index", video_token="video_token_index",
    token_grid=_llava_grid, token_px=_llava_px, frame_size=_llava_size, mean_std=(CLIP_MEAN, CLIP_STD),
    template=LLAVA_VIDEO_TEMPLATE, tokenizer="metaspace", special=["<unk>", "<s>", "</s>", "<image>", "<video>"],
    tiny=_llava_next_video_tiny, image_processor=_llava_next_image_processor,
    official={"vsibench": Feed("video", "crop", linear_rope=True, harness="thinking-in-space llava_vid"),
              "allangles": LLAVA_NEXT_IMAGES, "blink": LLAVA_NEXT_IMAGES},
    official_gap=dict(NO_HARNESS, mmsi="no harness setting of LLaVA-NeXT-Video on MMSI-Bench is pinned here"))
# lmms-eval llava_onevision @077faa1 (lmms_eval/models/simple/llava_onevision.py, generate_until): the question's
# images through LLaVA-NeXT's process_images with the checkpoint's image_aspect_ratio (anyres_max_9) when there is one
# image, "pad" when there are several; "<image> <image>\n" + question in conv_templates["qwen_1_5"] (LLaVA-NeXT
# llava/conversation.py conv_qwen: ChatML with the system turn "You are a helpful assistant."). The stock
# LlavaOnevisionProcessor (transformers 5.24) follows the same image rule (batch_num_images: only a lone image is
# tiled; several are padded to squares in the mean colour, 729 + 1 newline tokens each).
LMMS_QWEN_1_5 = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% set images = m['content'] | selectattr('type', 'equalto', 'image') | list %}"
    "{% for c in images %}<image>{% if not loop.last %} {% endif %}{% endfor %}"
    "{% if images %}{{ '\\n' }}{% endif %}"  # not a bare newline: trim_blocks drops one after a tag
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# VLMEvalKit LLaVA_OneVision (vlmeval/vlm/llava/llava.py, open-compass/VLMEvalKit @006aa29, generate_inner_image), the
# harness All-Angles Bench's VLMEvalKit fork runs: every image through process_images with the checkpoint's
# anyres_max_9 (several images tiled too), "<image>\n" per image before the question, conv qwen_1_5.
VLMEVAL_QWEN_1_5 = LMMS_QWEN_1_5.replace(
    "{% for c in images %}<image>{% if not loop.last %} {% endif %}{% endfor %}"
    "{% if images %}{{ '\\n' }}{% endif %}",
    "{% for c in images %}<image>\n{% endfor %}")
ONEVISION_LMMS_IMAGES = Feed("images", "anyres_max_9", template=LMMS_QWEN_1_5,
                             harness="lmms-eval llava_onevision @077faa1 (anyres_max_9 for a lone image, pad for "
                                     "several, conv qwen_1_5)")
# Assumption: the All-Angles fork (@0e1d210) keeps upstream VLMEvalKit's LLaVA_OneVision class unchanged; the fork's
# own vlm/llava/llava.py is not in the reference index.
ONEVISION_VLMEVAL_IMAGES = Feed("images", "anyres_max_9", template=VLMEVAL_QWEN_1_5, tile_every_image=True,
                                harness="VLMEvalKit LLaVA_OneVision @006aa29 (All-Angles fork; anyres_max_9 for "
                                        "every image, conv qwen_1_5)")
# thinking-in-space llava_onevision: each frame through the SigLIP image processor (squashed to S x S, mean = std
# = 0.5), 2x2 bilinear pooling -> ceil(27 / 2)^2 = 196 tokens per 384 px frame, one newline after the last frame.
LLAVA_ONEVISION = Family(
    name="LLaVA-OneVision", layout="video", image_token="image_token_index", video_token="video_token_index",
    token_grid=_llava_grid, token_px=_llava_px, frame_size=_llava_size, mean_std=(HALF, HALF),
    template=ONEVISION_TEMPLATE, tokenizer="byte_level",
    special=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"], tiny=_llava_onevision_tiny,
    image_processor=_llava_onevision_image_processor, newline=1,
    official={"vsibench": Feed("video", "square", harness="thinking-in-space llava_onevision (SigLIP squash)"),
              "allangles": ONEVISION_VLMEVAL_IMAGES, "blink": ONEVISION_LMMS_IMAGES, "mmsi": ONEVISION_LMMS_IMAGES},
    official_gap=NO_HARNESS)
