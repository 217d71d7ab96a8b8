"""What a family entry holds: `Family` (how frames become one family's LLM tokens) and `Feed` (how one input
mode feeds them: training's fixed squares, or a benchmark's official harness).

Run: no entry point; `python -m pytest tests/test_model.py -q`.
"""

from dataclasses import dataclass, field
from typing import Callable

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP / Qwen3-VL normalisation
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # InternViT


def repeat_token(tokens: dict, medium: str, count: int, runs: list[int]) -> str:
    """The stock processors' rule of Qwen and LLaVA: a placeholder becomes its visual token `count` times (one per
    visual token of the image, or of the whole video with its trailing newline)."""
    return tokens["visual"] * count


@dataclass(frozen=True)
class Feed:
    """How frames become pixels and placeholder tokens in one input mode.

    resize: "square": squashed to the Processor's size (training; LLaVA-OneVision's SigLIP frames at the tower
            size) | "smart": Qwen's smart_resize, aspect kept, sides multiples of the token pitch, within `pixels`
            | "crop": shortest edge to the tower size, then a centre crop (CLIP) | "anyres": LLaVA-NeXT's tiles
            (a base view plus crops, the stock LlavaNextProcessor's token count per image) | "tiles": InternVL's
            crop_to_patches (448-px tiles of the closest aspect ratio within min..max tiles, plus a thumbnail when
            there are several), the stock GotOcr2 image processor with the checkpoint's min / max patches
            | "anyres_max_9": LLaVA-OneVision's images, the stock LlavaOnevisionProcessor's rule (a lone image as
            anyres tiles, its unpadded grid downsampled to at most 9 tiles' worth, a newline per row; each of
            several images of one question padded to a square in the mean colour, one tile + one newline)."""
    mode: str  # "images": one placeholder per frame | "video": one placeholder for all frames
    resize: str = "square"
    pixels: tuple[int, int] | None = None  # (min, max) pixels per image or frame for "smart"
    merge_frames: bool = False  # Qwen video: consecutive frames share a temporal patch (else each is repeated)
    linear_rope: bool = False  # thinking-in-space: linear RoPE scaling so that the frames fit the context
    system: str | None = None  # a system turn the harness writes before the question (lmms-eval qwen3_vl)
    template: str | None = None  # the harness's own conversation text (a chat template), not the checkpoint's
    tile_every_image: bool = False  # "anyres_max_9": several images of a question tiled too (VLMEvalKit), not padded
    harness: str = "training inputs (fixed squares)"  # the code this mode follows (run log)


@dataclass(frozen=True)
class Family:
    name: str  # as the family's papers write it
    layout: str  # training: "images" (one image per frame) | "video" (the frames as one video)
    image_token: str  # config attribute holding the image placeholder's token id
    video_token: str  # config attribute holding the video placeholder's token id
    token_grid: Callable  # (config, (H, W)) -> (h, w) LLM tokens per frame
    token_px: Callable  # config -> pixels per token along each axis (the token pitch)
    frame_size: Callable  # (config, target px) -> (H, W) giving whole tokens
    mean_std: tuple  # pixel normalisation (overridden by the checkpoint's preprocessor_config.json)
    template: str  # chat template of the tiny model (and of a checkpoint that ships none)
    tokenizer: str  # "byte_level" (Qwen, Qwen2) | "metaspace" (Llama / Vicuna SentencePiece)
    special: list  # special tokens of the tiny tokenizer
    tiny: Callable  # (text dict, tokenizer, vision_layers, vision_hidden) -> config of the real class
    image_processor: Callable  # config -> the stock pillow image processor its checkpoints ship
    newline: int = 0  # video placeholder positions after the last frame that carry no frame token
    video_mark: str = ""  # tokenizer attribute naming the video placeholder where the config names none (InternVL)
    named_tokens: dict = field(default_factory=dict)  # tokenizer attribute -> token text its expansion writes
    expand: Callable = repeat_token  # (tokens, medium, count, runs per frame) -> the text replacing a placeholder
    flat_tiles: bool = False  # frames / tiles as one flat pixel_values (tiles, 3, S, S) (InternVL)
    patches: bool = False  # frames patchified by Qwen's image processor, with a (t, h, w) grid per image / video
    seconds_per_frame: float | None = None  # M-RoPE time of frames of unknown rate (Qwen2.5-VL's second_per_grid_ts)
    official: dict = field(default_factory=dict)  # benchmark -> Feed of its official harness
    official_gap: dict = field(default_factory=dict)  # benchmark -> what is missing for its official inputs
