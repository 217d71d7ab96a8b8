"""The benchmarks' pictures: VSI-Bench video frames (an mp4 or a folder of frames), All-Angles image files and
BLINK's embedded image bytes, read as the official harnesses read them, with errors that name the item, the file
(or parquet row) and what to do.

Frames: n at np.linspace(0, total-1, n, dtype=int) (thinking-in-space llava_onevision.py load_video; decord
there, PyAV or a frame folder here). Images: decoded by scenes/frames.py, so a 16-bit PNG is scaled to 8 bits as
training frames are, not clipped to white. Refused by name: undecodable bytes, truncated files, images over
PIL's decompression-bomb limit, aspect ratios of 200:1 or more (Qwen2-VL's smart_resize refuses them), and a
frame folder whose frames differ in size (a video's frames are stacked into one array).

Run: no entry point; tests are `python -m pytest tests/test_eval.py -q`.
"""
import functools
from pathlib import Path

from PIL import Image

from benchmarks.common import require
from scenes.frames import open_image, read_clip, read_rgb

MAX_ASPECT = 200  # transformers' Qwen2-VL smart_resize: "absolute aspect ratio must be smaller than 200"


class MediaError(ValueError):
    """A benchmark item's video or image that cannot be used; the message names the item, the file and the fix."""


def video_file(base: str) -> Path:
    """`<root>/<dataset>/<scene_name>.mp4`, else a folder `<root>/<dataset>/<scene_name>/` of frames."""
    for p in (Path(base + ".mp4"), Path(base)):
        if p.exists():
            return p
    raise FileNotFoundError(f"neither {base}.mp4 nor a frame folder {base}/ exists; unzip arkitscenes.zip, "
                            "scannet.zip and scannetpp.zip from nyu-visionx/VSI-Bench into the data root")


@functools.lru_cache(maxsize=4)
def read_frames(base: str, n: int) -> tuple:
    """n frames of the video at `base` (.mp4 or frame folder) as (H, W, 3) uint8 arrays of one size."""
    path = video_file(base)
    frames = read_clip(path, n)
    sizes = [f.shape[1::-1] for f in frames]  # (W, H)
    if len(set(sizes)) > 1:
        k = next(i for i, s in enumerate(sizes) if s != sizes[0])
        raise MediaError(f"{path}: its frames differ in size (sampled frame 0 is {sizes[0][0]}x{sizes[0][1]}, "
                         f"frame {k} is {sizes[k][0]}x{sizes[k][1]}); a video's frames share one size: extract "
                         "them again from the released video")
    return tuple(frames)


def image_names(item: dict) -> list[str]:
    """Where each image of an item comes from: its file, or (BLINK) its parquet file, row and column."""
    return item.get("image_names") or [str(x) for x in item.get("images", ())]


def check_image(im: Image.Image, name: str):
    w, h = im.size
    if max(w, h) >= MAX_ASPECT * min(w, h):
        raise MediaError(f"{name}: {w}x{h} px, an aspect ratio of {max(w, h) / max(min(w, h), 1):.0f}:1 (Qwen2-VL's "
                         f"processor refuses {MAX_ASPECT}:1 or more); crop or pad the image")


def read_image(src, name: str) -> Image.Image:
    """Encoded bytes or a file -> an RGB PIL image (16-bit grey scaled by scenes.frames.to_rgb)."""
    with open_image(src, name) as im:
        check_image(im, name)
    return Image.fromarray(read_rgb(src, name))


def visuals(item: dict, n_frames: int) -> list:
    """The item's frames (VSI-Bench) or images (All-Angles: files, BLINK: embedded bytes), in order."""
    try:
        if "video" in item:
            return list(read_frames(item["video"], n_frames))
        return [read_image(x, name) for x, name in zip(item["images"], image_names(item))]
    except ValueError as e:  # FrameError, MediaError, an mp4 that decodes short: each names the file
        raise MediaError(f"item {item['id']}: {e}") from None


def check_media(items: list[dict]):
    """Fail before loading the model if a video or image is missing, PyAV is missing for an mp4, or an image's
    header already shows it cannot be used (no image, over PIL's pixel limit, aspect ratio >= 200)."""
    for it in items:
        if "video" in it and video_file(it["video"]).is_file():
            require("av", "av", f"decoding {it['video']}.mp4 (or pre-extract its frames into {it['video']}/)")
        for x, name in zip(it.get("images", ()), image_names(it)):
            if not isinstance(x, bytes) and not Path(x).exists():
                raise FileNotFoundError(f"item {it['id']}: image {x} not found")
            try:
                with open_image(x, name) as im:
                    check_image(im, name)
            except ValueError as e:  # FrameError, MediaError
                raise MediaError(f"item {it['id']}: {e}") from None
