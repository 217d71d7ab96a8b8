"""InternVL (transformers' native `internvl`: InternVL3 "-hf" checkpoints and the converted InternVL2.5-MPO ones):
448-px tiles through InternViT, CLS dropped, pixel shuffle (downsample_ratio 0.5) -> 16 x 16 = 256 LLM tokens per
tile, each token 2 x 2 patches = 28 px; every image or frame `<img>` + `<IMG_CONTEXT>` x tokens + `</img>`.

The stock InternVLProcessor's text rule (processing_internvl.py, transformers 5.24), rebuilt here because its
video processor needs torchvision:
  image: the chat template writes `<IMG_CONTEXT>\\n` per image; it becomes `<img>` + `<IMG_CONTEXT>` x 256 x tiles
         + `</img>` (tiles: crop_to_patches, a thumbnail after them when there are several);
  video: the chat template writes `<video>\\n`; it becomes "Frame1: <img>...</img>\\nFrame2: <img>...</img>..." with
         one 448-px tile per frame (InternVLVideoProcessor: every frame resized to 448 x 448, no crop, no thumbnail).
All visual positions hold `<IMG_CONTEXT>` (config.image_token_id), images and frames alike: the model has one
pixel_values of all tiles, and `<img>`, `</img>`, `<video>` are the tokenizer's start_image_token, end_image_token and
video_token.

Training: the frames as a video, one tile per frame. Assumption: the video path is how InternVL reads
several frames (its video processor and the "Frame{i}: " text of InternVL's own video chat); every frame is
one regular 16 x 16 grid at 448 px, while the image path would tile each frame into up to 12 tiles plus a
thumbnail, several grids per frame at different scales.

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: InternVL2.5 arXiv 2412.05271, InternVL3 arXiv 2504.10479; transformers 5.24
models/internvl/{modeling,processing,video_processing}_internvl.py, models/got_ocr2/image_processing_pil_got_ocr2.py,
convert_internvl_weights_to_hf.py (chat template, tokenizer's extra special tokens); thinking-in-space @51e089c
lmms_eval/models/internvl2.py (VSI-Bench: one 448-px tile per frame, "Frame{i}: <image>" lines).
"""

import transformers

from .family import IMAGENET_MEAN, IMAGENET_STD, Family, Feed

# The converter's chat template (convert_internvl_weights_to_hf.py): no default system turn.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}")
# The tokenizer's extra special tokens as the converter writes them (tokenizer_config.json).
NAMED_TOKENS = {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>", "end_image_token": "</img>",
                "video_token": "<video>"}


def _side(config) -> int:
    size = config.vision_config.image_size
    return size[0] if isinstance(size, (list, tuple)) else size


def _tokens_per_side(config) -> int:
    """Tokens per tile side: the tile's patches after pixel shuffle (448 / 14 * 0.5 = 16)."""
    patch = config.vision_config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return round(_side(config) // patch * config.downsample_ratio)


def _internvl_px(config) -> int:  # 14 px patches, 2 x 2 of them per token
    return _side(config) // _tokens_per_side(config)


def _internvl_size(config, target: int) -> tuple[int, int]:  # one tile: the vision tower's fixed input size
    return _side(config), _side(config)


def _internvl_grid(config, size) -> tuple[int, int]:
    if tuple(size) != _internvl_size(config, 0):
        raise ValueError(f"internvl takes frames of {_internvl_size(config, 0)} px (one tile), not {tuple(size)}")
    n = _tokens_per_side(config)
    return n, n


def _internvl_expand(tokens: dict, medium: str, count: int, runs: list[int]) -> str:
    """processing_internvl.py replace_image_token / replace_video_token: one <img>...</img> run per image (all its
    tiles), or one "Frame{i}: <img>...</img>" line per frame of a video."""
    run = lambda n: tokens["start_image_token"] + tokens["visual"] * n + tokens["end_image_token"]  # noqa: E731
    if medium == "video":
        return "\n".join(f"Frame{i + 1}: {run(n)}" for i, n in enumerate(runs))
    return run(count)


def _internvl_tiny(text, tid, vision_layers, vision_hidden):
    # InternVL3's LLM is Qwen2.5 (a qwen2 text config); InternViT at 224 px: 16 x 16 patches -> 8 x 8 tokens.
    text = dict(text, model_type="qwen2", bos_token_id=None, eos_token_id=tid("<|im_end|>"),
                pad_token_id=tid("<|endoftext|>"))
    text.pop("mrope_section", None)
    text["rope_parameters"] = dict(rope_type="default", rope_theta=text.pop("rope_theta", 1e6))
    vision = dict(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
                  num_attention_heads=2, image_size=224, patch_size=14)
    return transformers.InternVLConfig(text_config=text, vision_config=vision, image_token_id=tid("<IMG_CONTEXT>"),
                                       image_seq_length=(224 // 14 // 2) ** 2, downsample_ratio=0.5)


def _internvl_image_processor(config):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    s = _side(config)  # the InternVL3-hf preprocessor_config.json: crop_to_patches off (the processor turns it on)
    return GotOcr2ImageProcessorPil(size={"height": s, "width": s}, crop_to_patches=False, min_patches=1,
                                    max_patches=12, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


# Images: the stock processor's crop_to_patches (min / max patches of the checkpoint's preprocessor_config.json);
# video: one tile per frame with its "Frame{i}: " line, as the stock video path and thinking-in-space's internvl2.
INTERNVL_IMAGES = Feed("images", "tiles", harness="the stock InternVLProcessor image path (crop_to_patches, "
                                                  "transformers 5.24)")
INTERNVL_VIDEO = Feed("video", "square", harness="the stock InternVLProcessor video path (one 448-px tile per "
                                                 "frame, Frame{i} lines); thinking-in-space internvl2")
INTERNVL = Family(
    name="InternVL", layout="video", image_token="image_token_id", video_token="image_token_id",
    token_grid=_internvl_grid, token_px=_internvl_px, frame_size=_internvl_size,
    mean_std=(IMAGENET_MEAN, IMAGENET_STD), template=INTERNVL_TEMPLATE, tokenizer="byte_level",
    special=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *NAMED_TOKENS.values()], tiny=_internvl_tiny,
    image_processor=_internvl_image_processor, video_mark="video_token", named_tokens=NAMED_TOKENS,
    expand=_internvl_expand, flat_tiles=True,
    official={"vsibench": INTERNVL_VIDEO, "stibench": INTERNVL_VIDEO, "allangles": INTERNVL_IMAGES,
              "blink": INTERNVL_IMAGES, "mmsi": INTERNVL_IMAGES, "spacevista": INTERNVL_IMAGES})
