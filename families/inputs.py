"""The one input builder: frames + prompt (+ answer) -> the stock model's inputs, for training, the probe and
evaluation.

  training  `Processor(config, tokenizer, size, folder=...)`: every frame squashed to one fixed square of whole
            tokens, in the family's training layout (families/__init__.py); labels on the answer tokens only;
  official  `Processor(config, tokenizer, folder=..., benchmark=...)`: a benchmark fed as its official harness
            feeds the family, as the family's `official` entry says (video or image mode, resize rule, pixel
            bounds, frames per temporal patch): Qwen2/2.5-VL smart_resize within the harness's min/max pixels
            (VIDEO mode with two frames per temporal patch on VSI-Bench), LLaVA-NeXT-Video anyres images and
            shortest-edge + centre-crop video frames, LLaVA-OneVision video frames squashed to the SigLIP size,
            Qwen3-VL images as lmms-eval's qwen3_vl feeds them, InternVL crop_to_patches tiles (images) and one
            tile per frame (video), as its stock processor builds them.
Both modes render the conversation with the checkpoint's own chat template (one placeholder per image, or one
for the video), expand each placeholder to as many tokens as the stock processor does, pad the batch and
patchify Qwen frames with the stock pillow image processor. The placeholders are the tokens the checkpoint's
config names (e.g. video_token_index), looked up in its tokenizer: a tokenizer without that token or a chat
template that writes none for the frames is refused when the Processor is built, with the fix.

Run: no entry point; `python -m pytest tests/test_model.py -q`.
References: transformers' Qwen2-VL image processor (smart_resize) and video processor (temporal patches),
LlavaNextProcessor (anyres), ProcessorMixin.apply_chat_template; thinking-in-space @51e089c
lmms_eval/models/{qwen2_5_vl,llava_vid,llava_onevision}.py.
"""

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image

from .family import Feed
from .registry import FAMILIES, family

# What export() copies unchanged from the base model's folder, next to the saved weights.
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                   "chat_template.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "generation_config.json")
BENCHMARKS = {"vsibench": "VSI-Bench", "allangles": "All-Angles Bench", "blink": "BLINK", "mmsi": "MMSI-Bench",
              "stibench": "STI-Bench", "spacevista": "SpaceVista-Bench"}  # names in messages


def check_supported(config) -> str:
    family(config)  # one clear error naming the supported families
    return config.model_type


def token_px(config) -> float:
    """Pixels per LLM visual token along each axis (an int where the pitch is whole)."""
    px = family(config).token_px(config)
    return int(px) if float(px).is_integer() else px


def frame_size(config, target: int = 448) -> tuple[int, int]:
    """(H, W) of the frames to feed so that every token covers whole pixels: Qwen takes any multiple of its
    token pitch (28 or 32 px; target rounded), LLaVA its vision tower's input size."""
    return family(config).frame_size(config, target)


def official_feed(config, benchmark: str) -> Feed:
    """The Feed of `benchmark`'s official harness for this model family; a clear error where there is none."""
    kind = getattr(config, "model_type", config)
    fam = FAMILIES.get(kind)
    if fam is None or not fam.official:
        known = ", ".join(k for k, f in FAMILIES.items() if f.official)
        raise ValueError(f"--inputs official has no harness settings for model type {kind!r} (known: {known}); "
                         "run it with --inputs train-size")
    if benchmark not in fam.official:
        have = ", ".join(f"{BENCHMARKS.get(b, b)} ({f.mode})" for b, f in fam.official.items())
        gap = fam.official_gap.get(benchmark, f"no harness setting for {BENCHMARKS.get(benchmark, benchmark)} is "
                                              "pinned here")
        raise ValueError(f"--inputs official builds {fam.name} inputs for {have} only; "
                         f"{BENCHMARKS.get(benchmark, benchmark)}: {gap}; use --inputs train-size")
    return fam.official[benchmark]


def checkpoint_folder(folder: str | None) -> str | None:
    """The local folder of a checkpoint given as a folder or a cached hub id (None: no folder)."""
    if folder is None or os.path.isdir(folder):
        return folder
    from huggingface_hub import snapshot_download
    return snapshot_download(folder, local_files_only=True)


def read_file(folder: str | None, name: str) -> str | None:
    """The text of file `name` in the checkpoint folder (or cached hub id); None where there is none."""
    folder = checkpoint_folder(folder)
    if folder is None or not os.path.exists(os.path.join(folder, name)):
        return None
    with open(os.path.join(folder, name)) as f:
        return f.read()


class Processor:
    """Frames + prompt (+ answer) -> input dict of the stock model, with labels on answer tokens only.

    The prompt goes through the checkpoint's own chat template (the tokenizer's, else the folder's
    chat_template.jinja / .json, else the family's documented one) and the visual placeholders are expanded as
    the stock processor does. Training (benchmark None): the frames are resized here to `size` (whole tokens)
    and normalised as the checkpoint's preprocessor_config.json says. Official (benchmark given): the frames
    are fed as that benchmark's harness feeds the family (families' `official` entries).
    `folder`: the checkpoint folder or id the processor files came from (export() copies them unchanged).
      __call__(frames_batch, prompts, answers=None) -> batch
      build(frames_batch, prompts, fps_batch=None)  -> (batch, one `inputs` record per item), for eval.py"""

    def __init__(self, config, tokenizer, size: tuple[int, int] | None = None, folder: str | None = None,
                 benchmark: str | None = None):
        if benchmark is not None:
            self.feed = official_feed(config, benchmark)  # first: names the harnesses for an unknown family
            if size is not None:
                raise ValueError("official inputs take each harness's own sizes; a frame size is for training inputs")
        self.config, self.tokenizer, self.folder, self.benchmark = config, tokenizer, folder, benchmark
        self.kind, self.family = check_supported(config), family(config)
        fam = self.family
        if benchmark is None:
            self.feed = Feed(fam.layout)
        self.token_px = token_px(config)
        self.size = self.grid = self.frame_tokens = None  # fixed frames only (not smart_resize, not anyres tiles)
        if self.feed.resize in ("square", "crop"):
            self.size = tuple(size or frame_size(config))
            self.grid = fam.token_grid(config, self.size)  # (h, w) tokens per frame
            self.frame_tokens = self.grid[0] * self.grid[1]
            if fam.patches and (self.size[0] % self.token_px or self.size[1] % self.token_px):
                raise ValueError(f"frame size {self.size}: {self.kind} needs multiples of {self.token_px} px "
                                 f"(frame_size gives one)")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # The chat template: the tokenizer's, else the checkpoint's processor template (llava-hf ships it in
        # chat_template.json), else the family's documented one.
        # A harness that writes its own conversation text (LLaVA's conv templates) overrides them all.
        self.template, self.template_origin = next((text, origin) for text, origin in (
            (self.feed.template, "the harness's conversation text"),
            (tokenizer.chat_template, "chat template"),
            (read_file(folder, "chat_template.jinja"), "chat_template.jinja"),
            (json.loads(read_file(folder, "chat_template.json") or "{}").get("chat_template"), "chat_template.json"),
            (fam.template, "no chat template in the tokenizer: the family's documented template text")) if text)
        mean, std = fam.mean_std
        self.preprocessor = json.loads(read_file(folder, "preprocessor_config.json") or "{}")
        self.mean, self.std = self.preprocessor.get("image_mean", mean), self.preprocessor.get("image_std", std)
        self.token_ids = {"image": getattr(config, fam.image_token, None), "video": getattr(config, fam.video_token, None)}
        self.medium = "video" if self.feed.mode == "video" else "image"  # what one placeholder stands for
        self.vis_id = self.token_ids[self.medium]  # the token at every visual position
        self.visual_token = self._placeholder()
        self.named = self._named_tokens()  # the other tokens the family's expansion writes (InternVL's <img> ...)
        # The placeholder the chat template writes: the visual token itself, or (InternVL video) a token of its
        # own that the expansion replaces by one run of visual tokens per frame.
        self.placeholder = self.named[fam.video_mark] if self.medium == "video" and fam.video_mark else self.visual_token
        self.mark_id = tokenizer.convert_tokens_to_ids(self.placeholder)
        self._check_template()
        self._frame_processors()

    # ------------------------------------------------------------------ placeholders, checked at load time

    def _where(self) -> str:
        return str(self.folder) if self.folder is not None else f"the {self.kind} tokenizer"

    def _placeholder(self) -> str:
        """The text of the placeholder token the config names for this mode; refused where the tokenizer cannot
        write it: no such token, or an ordinary piece of text (the stock processors expand a token of its own)."""
        mode, attr = self.medium, getattr(self.family, f"{self.medium}_token")
        tok, tid = self.tokenizer, self.vis_id
        text = tok.convert_ids_to_tokens(tid) if isinstance(tid, int) and 0 <= tid < len(tok) else None
        own = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}  # tokens the tokenizer writes by itself
        if text is None or text not in tok.get_added_vocab() or tid in own or \
                tok(text, add_special_tokens=False)["input_ids"] != [tid]:
            what = "has no token in the tokenizer" if text is None else \
                f"is {text!r} in the tokenizer, the tokenizer's own BOS / EOS / pad token" if tid in own else \
                f"is {text!r} in the tokenizer, a piece of ordinary text, not a token of its own"
            raise ValueError(f"{self._where()}: config.{attr} = {tid} {what}, so no text can hold the {mode} "
                             f"placeholder; use a checkpoint whose tokenizer has the {mode} token its config names "
                             f"(as the stock {self.family.name} ones), or set {attr} in config.json to that token's id")
        return text

    def _named_tokens(self) -> dict:
        """The tokenizer's own names for the extra tokens the family's expansion writes (InternVL: <img>, </img>,
        <video>), each a token of its own; refused at load time otherwise."""
        tok, named = self.tokenizer, {"visual": self.visual_token}
        for attr in self.family.named_tokens:
            text = getattr(tok, attr, None)
            if not isinstance(text, str) or text not in tok.get_added_vocab() or \
                    tok(text, add_special_tokens=False)["input_ids"] != [tok.convert_tokens_to_ids(text)]:
                raise ValueError(f"{self._where()}: the tokenizer names no token {attr} (it has {text!r}); the stock "
                                 f"{self.family.name} processor writes it; use a checkpoint whose tokenizer_config.json "
                                 f"names {attr} (extra_special_tokens, as the stock {self.family.name} ones)")
            named[attr] = text
        return named

    def _check_template(self):
        """One frame in a conversation must give one placeholder: a chat template without the branch of this mode
        writes none, and the model would find no visual tokens."""
        found = self._tokenize(self.text(1, ""))[0].count(self.mark_id)
        if found != 1:
            self._wrong_placeholders(found, 1)

    def _wrong_placeholders(self, found: int, want: int):
        mode, attr = self.medium, getattr(self.family, f"{self.medium}_token")
        origin = f"the tokenizer's {self.family.video_mark}" if self.mark_id != self.vis_id else \
            f"config.{attr} = {self.vis_id}"
        branch = f" (it has no {mode} branch)" if found == 0 else ""
        raise ValueError(f"{self._where()}: the conversation text ({self.template_origin}) holds {found} {mode} "
                         f"placeholder(s) {self.placeholder!r} ({origin}) for {want} "
                         f"{mode}(s){branch}; fix the tokenizer's chat "
                         f"template: a {mode} branch writing {self.placeholder!r} once per {mode} (chat_template.jinja, "
                         f"or chat_template in tokenizer_config.json), and no {self.placeholder!r} in the prompt")

    # ------------------------------------------------------------------ text

    def text(self, n: int, prompt: str, answer: str | None = None) -> str:
        """The conversation of n frames: one placeholder per image (images mode) or one for the video, then the
        prompt; up to the assistant turn (answer None: ready for generate()), else with the answer turn."""
        visual = [{"type": "video"}] if self.medium == "video" else [{"type": "image"}] * n
        messages = [{"role": "user", "content": visual + [{"type": "text", "text": prompt}]}]
        if self.feed.system is not None:  # the harness's own system turn (else the template's default, if any)
            messages.insert(0, {"role": "system", "content": self.feed.system})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=answer is None, tokenize=False,
                                                  chat_template=self.template)

    def _tokenize(self, text: str, start: int | None = None) -> tuple[list[int], list[int]]:
        """Token ids of a text and labels: the ids of tokens ending after character `start`, -100 elsewhere."""
        bos = self.tokenizer.bos_token  # as ProcessorMixin.apply_chat_template: no second BOS if the template wrote one
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=not (bos and text.startswith(bos)))
        start = len(text) if start is None else start
        return enc["input_ids"], [i if end > start else -100 for i, (_, end) in zip(enc["input_ids"], enc["offset_mapping"])]

    def _conversation(self, n: int, prompt: str, answer: str | None, item: dict) -> tuple[list[int], list[int]]:
        """Token ids and labels (-100 outside the answer) of one conversation, placeholders expanded for `item`."""
        if answer is None:
            return self._tokenize(self._expand(self.text(n, prompt), item))
        # The training text is the conversation with the answer turn as the template writes it (which need not
        # extend the generation prompt: LLaVA-OneVision's writes "assistant \n" vs "assistant\n").
        mark = "\ue000"  # a private-use character standing in for the answer, to find where it starts
        text = self._expand(self.text(n, prompt, mark), item)
        if text.count(mark) != 1:
            raise ValueError(f"{self.kind} chat template: cannot find the answer in the assistant turn")
        ids, labels = self._tokenize(text.replace(mark, answer), text.index(mark))
        if self.tokenizer.eos_token_id not in labels:
            # Assumption: the answer ends with EOS (L_LM teaches the model to stop) where the template has none.
            ids, labels = ids + [self.tokenizer.eos_token_id], labels + [self.tokenizer.eos_token_id]
        return ids, labels

    def _expand(self, text: str, item: dict) -> str:
        """The stock processors' rule, on the text before it is tokenized in one piece: the k-th placeholder becomes
        the family's expansion of the k-th image or video (Qwen, LLaVA: its visual token counts[k] times, one per
        visual token with a video's trailing newline; InternVL: <img>...</img> runs, one per frame of a video
        after its "Frame{i}: ")."""
        pieces, counts = text.split(self.placeholder), item["counts"]
        if len(pieces) - 1 != len(counts):
            self._wrong_placeholders(len(pieces) - 1, len(counts))
        runs = item.get("runs") or [[c] for c in counts]
        out = [pieces[0]]
        for count, run, piece in zip(counts, runs, pieces[1:]):
            out += [self.family.expand(self.named, self.medium, count, run), piece]
        return "".join(out)

    # ------------------------------------------------------------------ pixels

    def _frame_processors(self):
        fam, feed, v = self.family, self.feed, self.config.vision_config
        if fam.patches:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
            self.patch, self.merge, self.temporal = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
            self.min_px, self.max_px = feed.pixels or (None, None)
            resize = dict(min_pixels=self.min_px, max_pixels=self.max_px) if feed.resize == "smart" else {}
            self.image_processor = Qwen2VLImageProcessorPil(  # square frames: already at `size`, patchify only
                do_resize=feed.resize == "smart", patch_size=self.patch, merge_size=self.merge,
                temporal_patch_size=self.temporal, image_mean=self.mean, image_std=self.std, **resize)
        elif feed.resize == "crop":
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
            side = self.size[0]
            self.frame_processor = CLIPImageProcessorPil(size={"shortest_edge": side},
                                                         crop_size={"height": side, "width": side},
                                                         image_mean=self.mean, image_std=self.std)
        elif feed.resize == "anyres":
            from transformers import LlavaNextProcessor
            from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
            side = check_pinpoints(self.config)
            size, crop = {"shortest_edge": side}, {"height": side, "width": side}
            self.llava_next = LlavaNextProcessor(
                image_processor=LlavaNextImageProcessorPil(size=size, crop_size=crop, image_mean=self.mean,
                                                           image_std=self.std,
                                                           image_grid_pinpoints=self.config.image_grid_pinpoints),
                tokenizer=self.tokenizer, patch_size=v.patch_size, num_additional_image_tokens=1,
                vision_feature_select_strategy=self.config.vision_feature_select_strategy,
                image_token=self.placeholder)
        elif feed.resize == "anyres_max_9":
            self.onevision = onevision_processor(self.config, self.tokenizer, self.placeholder, self.mean, self.std)
        elif feed.resize == "tiles":  # InternVL's crop_to_patches, as its stock processor turns it on for images
            from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
            side, pre = fam.frame_size(self.config, 0)[0], self.preprocessor
            self.tile_range = pre.get("min_patches", 1), pre.get("max_patches", 12)
            self.tiler = GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=True,
                                                  min_patches=self.tile_range[0], max_patches=self.tile_range[1],
                                                  image_mean=self.mean, image_std=self.std)
        elif feed.resize != "square":
            raise ValueError(f"{self.kind}: no frame path for resize {feed.resize!r}")

    def resize(self, frame) -> np.ndarray:
        """A frame squashed to `size` (bicubic), as (H, W, 3) uint8."""
        img = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
        img = img.convert("RGB")
        if img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), Image.BICUBIC)
        return np.asarray(img)

    def qwen_video(self, frames) -> tuple[torch.Tensor, list[int]]:
        """Qwen VIDEO mode, the Qwen2-VL video processor's rule (rebuilt: that processor needs torchvision):
        (F, H, W, 3) uint8 -> patches (t*h*w, 3*temporal*patch^2) and grid [t, h, w] in patches, consecutive
        frames sharing a temporal patch."""
        import torch.nn.functional as nnf
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        x = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2).float()  # (F, 3, H, W)
        H, W = smart_resize(x.shape[2], x.shape[3], self.patch * self.merge, self.min_px, self.max_px)
        # Assumption: qwen-vl-utils' resize (torchvision bicubic, antialias, on uint8: rounded back to 0..255)
        x = nnf.interpolate(x, size=(H, W), mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
        if pad := -len(x) % self.temporal:  # an odd frame count repeats the last frame
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        x = (x / 255 - mean) / std
        t, h, w, m, p = len(x) // self.temporal, H // self.patch, W // self.patch, self.merge, self.patch
        x = x.view(t, self.temporal, 3, h // m, m, p, w // m, m, p)  # (t, tp, C, h/m, m, p, w/m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, tp, p, p): merge groups contiguous
        return x.reshape(t * h * w, 3 * self.temporal * p * p), [t, h, w]

    def _visual(self, clip, fps) -> dict:
        """One item's frames -> pixels, grids (t, h, w) in patches, tokens per placeholder, and what the batch
        needs besides (image_sizes, second_per_grid)."""
        fam, feed = self.family, self.feed
        if fam.patches:
            if feed.merge_frames:
                pixels, grid = self.qwen_video(clip)
                grids = [grid]
            else:
                frames = [self.resize(f) for f in clip] if feed.resize == "square" else list(clip)
                out = self.image_processor(images=frames, return_tensors="pt")  # each frame repeated to t = 2
                pixels, grids = out["pixel_values"], out["image_grid_thw"].tolist()  # (F * patches, C*t*p*p)
                if feed.mode == "video":
                    # A video of the frames, each repeated to fill a temporal patch: its patches are the images'
                    # patches in order, its grid (F, H/p, W/p), so every token still belongs to one frame.
                    grids = [[len(grids), *grids[0][1:]]]
            item = dict(pixels=pixels, grids=grids, counts=[t * h * w // self.merge ** 2 for t, h, w in grids])
            if feed.mode == "video" and fam.seconds_per_frame is not None:
                per_grid = self.temporal if feed.merge_frames else 1  # frames per temporal patch
                item["second_per_grid"] = per_grid / fps if fps else per_grid * fam.seconds_per_frame
            return item
        p, side = _first(self.config.vision_config.patch_size), _first(self.config.vision_config.image_size)
        if feed.resize == "tiles":  # every image: its tiles (and thumbnail) as one <img>...</img> run
            out = self.tiler(images=list(clip), return_tensors="pt")
            per_tile = int(np.prod(fam.token_grid(self.config, fam.frame_size(self.config, 0))))
            tiles = [int(n) for n in out["num_patches"]]
            return dict(pixels=out["pixel_values"], grids=[[n, side // p, side // p] for n in tiles],
                        counts=[per_tile * n for n in tiles])
        if feed.resize == "anyres":  # the stock LLaVA-NeXT processor: tiles per image, its token count
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
            item = dict(pixels=[], grids=[], counts=[], image_sizes=[])
            for image in clip:
                out = self.llava_next(images=[image], text=[self.placeholder], return_tensors="pt",
                                      add_special_tokens=False)
                item["pixels"].append(out["pixel_values"][0])  # (tiles, 3, S, S)
                item["image_sizes"].append(out["image_sizes"])
                item["counts"].append(int((out["input_ids"] == self.vis_id).sum()))
                tiles = image_size_to_num_patches(out["image_sizes"][0].tolist(), self.config.image_grid_pinpoints, side)
                item["grids"].append([tiles, side // p, side // p])
            return item
        if feed.resize == "anyres_max_9":  # the stock LLaVA-OneVision rule, through its own code
            from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches
            # Several images as one question's list (padded squares), or each its own list (tiled, VLMEvalKit).
            images = [[im] for im in clip] if feed.tile_every_image else [list(clip)]
            out = self.onevision.image_processor(images=images, return_tensors="pt")
            counts = [self.onevision.replace_image_token(out, i).count(self.placeholder) for i in range(len(clip))]
            tiled = [n == 1 for n in out["batch_num_images"].tolist() for _ in range(n)]
            tiles = [image_size_to_num_patches(size.tolist(), self.config.image_grid_pinpoints, side) if t else 1
                     for size, t in zip(out["image_sizes"], tiled)]
            return dict(pixels=[x[:n] for x, n in zip(out["pixel_values"], tiles)], counts=counts,
                        grids=[[n, side // p, side // p] for n in tiles], image_sizes=[out["image_sizes"]],
                        num_images=out["batch_num_images"])
        if feed.resize == "crop":
            x = self.frame_processor(images=list(clip), return_tensors="pt")["pixel_values"]  # (F, 3, S, S)
        else:  # the frames as they are, the model pools its own patches
            x = torch.from_numpy(np.stack([self.resize(f) for f in clip])).permute(0, 3, 1, 2).float() / 255
            x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]  # (F, 3, H, W)
        grid = [x.shape[-2] // p, x.shape[-1] // p]
        if feed.mode == "images":
            return dict(pixels=x, grids=[[1, *grid]] * len(clip), counts=[self.frame_tokens] * len(clip))
        return dict(pixels=x, grids=[[len(clip), *grid]], counts=[self.frame_tokens * len(clip) + fam.newline],
                    runs=[[self.frame_tokens] * len(clip)])

    # ------------------------------------------------------------------ batches

    def build(self, frames, prompts, fps_batch=None, answers=None) -> tuple[dict, list[dict]]:
        """frames: list (batch) of frame lists/arrays (F, H, W, 3) uint8 or PIL images; prompts: list of str;
        fps_batch: per item, the frame rate of its sampled frames (None: unknown).
        answers=None: left-padded, ends with the assistant prefix, ready for generate().
        answers given: right-padded with labels = answer tokens, -100 elsewhere.
        Returns (batch, one record per item: mode, frames, grids (t, h, w) in patches, visual tokens, and
        second_per_grid where the family's M-RoPE takes it)."""
        seqs, labels, items, records = [], [], [], []
        visual_ids = {i for i in self.token_ids.values() if i is not None}
        for i, (clip, prompt) in enumerate(zip(frames, prompts)):
            item = self._visual(clip, fps_batch[i] if fps_batch else None)
            ids, lab = self._conversation(len(clip), prompt, None if answers is None else answers[i], item)
            seqs.append(ids)
            labels.append(lab)
            items.append(item)
            records.append(dict(mode=self.feed.mode, frames=len(clip), grids=item["grids"],
                                tokens=sum(t in visual_ids for t in ids)))
            if "second_per_grid" in item:
                records[-1]["second_per_grid"] = item["second_per_grid"]
        S = max(len(s) for s in seqs)
        left = answers is None
        pad = lambda s, v: ([v] * (S - len(s)) + s) if left else (s + [v] * (S - len(s)))  # noqa: E731
        batch = {"input_ids": torch.tensor([pad(s, self.pad_id) for s in seqs]),
                 "attention_mask": torch.tensor([pad([1] * len(s), 0) for s in seqs])}
        if answers is not None:
            batch["labels"] = torch.tensor([pad(lab, -100) for lab in labels])
        video = self.feed.mode == "video"
        if self.family.patches:
            batch["pixel_values_videos" if video else "pixel_values"] = torch.cat([it["pixels"] for it in items])
            batch["video_grid_thw" if video else "image_grid_thw"] = torch.tensor([g for it in items for g in it["grids"]])
            if "second_per_grid" in items[0]:
                batch["second_per_grid_ts"] = torch.tensor([it["second_per_grid"] for it in items])
            ids = batch["input_ids"]  # M-RoPE reads the modality of each position: 1 image, 2 video
            batch["mm_token_type_ids"] = ((ids == self.token_ids["image"]).int()
                                          + 2 * (ids == self.token_ids["video"]).int())
        elif self.feed.resize in ("anyres", "anyres_max_9"):
            pixels = [p for it in items for p in it["pixels"]]
            tiles = max(len(p) for p in pixels)
            batch["pixel_values"] = torch.stack([torch.cat([p, p.new_zeros(tiles - len(p), *p.shape[1:])])
                                                 for p in pixels])  # (images, tiles, 3, S, S), tiles zero-padded
            batch["image_sizes"] = torch.cat([s for it in items for s in it["image_sizes"]])
            if self.feed.resize == "anyres_max_9":  # which images the model tiles: those alone in their list
                batch["batch_num_images"] = torch.cat([it["num_images"] for it in items])
        elif self.family.flat_tiles:  # InternVL: every tile or frame of the batch one row, in text order
            batch["pixel_values"] = torch.cat([it["pixels"] for it in items])  # (tiles, 3, S, S)
        else:
            if len({it["pixels"].shape for it in items}) > 1:
                raise ValueError(f"{self.kind} batches need the same number of frames per item")
            batch["pixel_values_videos"] = torch.stack([it["pixels"] for it in items])  # (B, F, 3, H, W)
        return batch, records

    def __call__(self, frames, prompts, answers=None) -> dict:
        """The batch of build() (training and the probe: frames at `size`, labels where answers are given)."""
        return self.build(frames, prompts, answers=answers)[0]

    def describe(self) -> str:
        """One line for the run log: family, mode, frame sizes, the harness followed, the chat template's origin."""
        f = self.feed
        how = {"square": lambda: f"{self.size[0]}x{self.size[1]} px frames (squashed)",
               "smart": lambda: f"{f.pixels[0]}..{f.pixels[1]} px (smart_resize)",
               "crop": lambda: f"{self.size[0]}px crop",
               "anyres": lambda: f"anyres tiles of {self.config.vision_config.image_size}px",
               "anyres_max_9": lambda: f"{self.config.vision_aspect_ratio} tiles of "
                                       f"{self.config.vision_config.image_size}px" + (
                                           "" if f.tile_every_image else " (several images: padded squares)"),
               "tiles": lambda: f"crop_to_patches: {self.tile_range[0]}..{self.tile_range[1]} tiles of "
                                f"{frame_size(self.config)[0]}px (+ a thumbnail)"}[f.resize]()
        mode = f"video, frames in groups of {self.temporal}" if f.merge_frames else f.mode
        tokens = f", {self.frame_tokens} tokens/frame" if self.frame_tokens else ""
        return f"{self.kind}: {mode}, {how}{tokens}, {f.harness}, {self.template_origin}"

    def token_map(self, input_ids: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(F, h, w) sequence positions of each frame's visual tokens in one sequence (S,)."""
        if self.grid is None:
            raise ValueError(f"{self.describe()}: frames of varying size have no fixed token map; use training inputs")
        pos = (input_ids == self.vis_id).nonzero().flatten()
        h, w = self.grid
        n = num_frames * h * w
        if pos.numel() != n + self.family.newline:
            raise ValueError(f"expected {num_frames}x{h}x{w} visual tokens (+{self.family.newline} newline), "
                             f"found {pos.numel()}")
        return pos[:n].view(num_frames, h, w)  # frame-major, row-major; a trailing newline is skipped

    def save_pretrained(self, path: str):
        """The processor files next to a checkpoint: the folder's own files, copied byte for byte; without a
        folder, the tokenizer (with its chat template) and the family's stock image processor."""
        folder = checkpoint_folder(self.folder)
        if folder is not None:
            for name in PROCESSOR_FILES:
                if os.path.exists(os.path.join(folder, name)):
                    shutil.copyfile(os.path.join(folder, name), os.path.join(path, name))
            return
        self.tokenizer.chat_template = self.tokenizer.chat_template or self.template
        self.tokenizer.save_pretrained(path)
        self.family.image_processor(self.config).save_pretrained(path)


def check_pinpoints(config) -> int:
    """The anyres tile side (the vision tower's image_size), once the config's grid pinpoints are checked to be
    multiples of it: otherwise the processor would cut other tiles than the model unpacks."""
    side = config.vision_config.image_size
    odd = [q for q in config.image_grid_pinpoints if q[0] % side or q[1] % side]
    if odd:
        raise ValueError(f"config image_grid_pinpoints {odd} are not multiples of the vision tower's image_size "
                         f"{side}; anyres tiles would not line up: fix the model's config.json")
    return side


def onevision_processor(config, tokenizer, placeholder: str, mean, std):
    """transformers' own LlavaOnevisionProcessor without its video processor (its __init__ requires one, and that
    one needs torchvision): the attributes its __init__ sets, for its image rule (replace_image_token,
    _get_number_of_features) and its PIL image processor at the model's tile size and grid pinpoints."""
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
    v = config.vision_config
    check_pinpoints(config)
    stock = object.__new__(LlavaOnevisionProcessor)
    stock.image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": v.image_size, "width": v.image_size}, image_grid_pinpoints=config.image_grid_pinpoints,
        image_mean=list(mean), image_std=list(std))
    stock.tokenizer, stock.video_processor, stock.chat_template = tokenizer, None, None
    stock.num_image_tokens = (v.image_size // v.patch_size) ** 2  # patches per tile (729 at 384 px)
    stock.vision_feature_select_strategy = config.vision_feature_select_strategy
    stock.vision_aspect_ratio = config.vision_aspect_ratio
    stock.image_token, stock.image_token_id = placeholder, tokenizer.convert_tokens_to_ids(placeholder)
    stock.video_token = stock.video_token_id = None
    return stock


def _first(size):
    """A vision config's patch / image size as one int (InternViT keeps (h, w) pairs)."""
    return size[0] if isinstance(size, (list, tuple)) else size


def answer_logits_only(inputs: dict) -> dict:
    """inputs with labels -> the same L_LM from the answer's logits alone: labels cut to the positions from the one
    before the first supervised token on, and logits_to_keep as many (the stock loss shifts by one inside that
    window). Spares the (S, vocab) logits no label reads: 2339 x 152064 x 4 B = 1.4 GB for 16 frames of a
    Qwen2.5-VL-7B sample, held until backward ends."""
    labels = inputs["labels"]
    supervised = (labels != -100).any(0).nonzero()
    if not len(supervised):
        raise ValueError("answer_logits_only: no label is supervised (every label is -100)")
    keep = labels.shape[1] - int(supervised[0]) + 1
    return {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep}
