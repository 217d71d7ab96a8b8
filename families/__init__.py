"""Model families: one small adapter per VLM family, the only place that knows a family's token layout, and the
one input builder (Processor) that reads them for training, the probe and evaluation.

A family says how frames become LLM tokens and where GASP reads them:
  * layout: "images" (every frame one image, `<|vision_start|><|image_pad|>*n<|vision_end|>` each: Qwen3-VL) or
    "video" (all frames one run: `<|video_pad|>` for Qwen2-VL / Qwen2.5-VL, `<video>` for LLaVA) in training;
    patches: Qwen's patchified pixels with a (t, h, w) grid;
  * the placeholders the stock processor expands: the config attributes naming the image and video token ids
    (image_token_id / video_token_index ...); the tokens themselves are looked up in the checkpoint's tokenizer;
  * expand: the text a placeholder becomes (its token once per visual token; InternVL: `<img>...</img>` runs,
    one per frame after "Frame{i}: ", from the tokenizer's named tokens, and a `<video>` placeholder of its own);
  * newline: placeholder positions after the last frame's grid that carry no frame token (LLaVA-OneVision
    appends one `image_newline` to a video): the token map skips them;
  * official: per benchmark, the Feed its official harness uses (video or image mode, resize rule, pixel
    bounds, frames per temporal patch, RoPE scaling);
  * the token grid and pixels per token (token_px), and the frame size that gives whole tokens;
  * pixel normalisation, the tokenizer style and chat template of its tiny random-init model, the stock
    (pillow) image processor its checkpoints ship, and the tiny config of its real transformers class.
Where the heads read q and k is found on the attention module (q_norm / k_norm if present, else q_proj /
k_proj: model.qk_modules), and the probe reads what the attention function receives, for every family.

Files: family.py (the Family and Feed records), qwen.py, llava.py and internvl.py (the entries), registry.py
(FAMILIES, `family(config)`), inputs.py (Processor: frames + text -> model inputs, training or official), tiny.py
(`build_tokenizer`, `tiny_config`, `build_tiny`: random-init tiny models of the real classes with the family's
stock processor files, for the tests and the embedded default). Everything is importable from `families`.

Adding a family: one Family entry in registry.py's FAMILIES (and its test in tests/test_model.py), nothing else.

| family           | frames as   | tokens per frame             | px per token           | q/k read at        |
|------------------|-------------|------------------------------|------------------------|--------------------|
| qwen2_vl         | one video   | (H/28)(W/28)                 | 28 (patch 14, merge 2) | q_proj / k_proj    |
| qwen2_5_vl       | one video   | (H/28)(W/28)                 | 28                     | q_proj / k_proj    |
| qwen3_vl         | image list  | (H/32)(W/32)                 | 32 (patch 16, merge 2) | q_norm / k_norm    |
| llava_next_video | one video   | (S/14/2)² (2x2 avg pool)     | 28 at S = 336          | q_proj / k_proj    |
| llava_onevision  | one video   | ⌈S/14/2⌉² (bilinear), +1 newline after the last frame | 27 at S = 384 | q_proj / k_proj |
| internvl         | one video: a 448 tile per frame, "Frame{i}: <img>...</img>" | (S/14/2)² (pixel shuffle) | 28 | q_proj / k_proj |

Qwen2-VL and Qwen2.5-VL take the frames as one video in which every frame is repeated to fill a temporal
patch (t = 2): every token belongs to one frame (the stock video path merges two different frames into one
token), and the frames get the M-RoPE ids of a video: spatial ids shared by all frames, the temporal id one
step a frame. Assumption: this is the paper's multi-frame setting (video input, as on VSI-Bench).
As an image list every frame would shift all three ids by max(h, w) + 2, so a point's true match in a frame
7 steps back sat 126 positions away on every rotary axis (measured on the embedded default: native Q-K PCK@2
0.76 as images, 0.85 when the same q and k were compared before M-RoPE, 0.84 as a video). Qwen3-VL places
every frame of a video like an image (its own ids after the previous frame's, with timestamp text between),
so it keeps the image list. Qwen3-VL's DeepStack adds vision features to the first LLM layers' visual
positions; the heads stay one per LLM layer.
LLaVA-OneVision takes frames as a video, not an image list. Assumption: the video path is how
the model was trained on video (LLaVA-Video-178K), it gives each frame one regular grid (2x2-pooled SigLIP
patches, 196 tokens at 384 px) with a single newline after the last frame; the image path tiles every
frame with anyres (a base view plus crops, a newline per row, 729+ tokens each), several grids per frame.
InternVL takes frames as its video path does, one 448-px tile each (families/internvl.py says why).

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: Qwen2-VL arXiv 2409.12191, Qwen2.5-VL arXiv 2502.13923, Qwen3-VL (github.com/QwenLM/Qwen3-VL),
LLaVA-NeXT-Video (llava-vl.github.io/blog/2024-04-30-llava-next-video), LLaVA-OneVision arXiv 2408.03326,
InternVL3 arXiv 2504.10479.
"""

from .family import CLIP_MEAN, CLIP_STD, HALF, Family, Feed  # noqa: F401
from .inputs import (PROCESSOR_FILES, Processor, answer_logits_only, check_supported, checkpoint_folder,  # noqa: F401
                     frame_size, official_feed, read_file, token_px)
from .registry import FAMILIES, SUPPORTED, family  # noqa: F401
from .tiny import build_tiny, build_tokenizer, tiny_config  # noqa: F401
