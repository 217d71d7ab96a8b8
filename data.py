"""DL3DV scenes and ground-truth point tracks: the paper's Sec. 3 "3D Scenes" data pipeline.

GASP supervises its per-layer correspondence heads with point tracks and depth from DL3DV video
scenes. This file is that pipeline, top to bottom:

  1. Depth maps (`read_depth`: depths/*.npy, or COLMAP MVS arrays through scenes/colmap.py, which also reads the
     SfM model's cameras.bin, images.bin and points3D.bin with named errors for broken files).
  2. `load_scene`: one validated scene folder -> `Scene`, from ONE track source, in this order:
     "depths"  depths/<stem>.npy aligned with images_N/ and transforms.json (poses nerfstudio/OpenGL,
               converted once to OpenCV);
     "dense"   a COLMAP MVS workspace <scene>/dense/ (frames dense/images, PINHOLE K and poses
               dense/sparse/*.bin, depth dense/stereo/depth_maps/*.geometric.bin): one undistorted geometry;
     "sparse"  DL3DV's SfM model colmap/sparse/0/*.bin (no depth needed): frames from images_N/ matched
               by file name, K, distortion and poses from the model, tracks = the model's keypoints.
     Poses and points always come from one reconstruction (transforms.json's world is not COLMAP's).
  3. Projection math, one function per step: `unproject`, `cam_to_world`, `world_to_cam`, `project`
     (OPENCV/RADIAL/SIMPLE_RADIAL distortion applied exactly), `visibility` (inside by a margin, in
     front, |z_proj - D(p)| <= 0.05 min(z_proj, D(p))).
  4. `track` (depth sources) / `sparse_tracks` (SfM source): where the anchor frame's query points land
     in every frame of a sample.
  5. `make_sample` / `SceneDataset`: an anchor frame, F-1 frames from a +-48 frame window, query points
     on 8x8 and 24x24 lattices of the anchor frame (the paper's recipe), as one dict for every source.
     Broken scenes and unusable samples are skipped, named and counted (`scan`, `SceneDataset.skipped`).
  6. The instruction stream for L_LM (`InstructionDataset`), the tracks figure (`show`, drawn by
     figures/tracks.py) and the command line.
Synthetic scenes in this layout (the embedded default's data) are rendered by scenes/synth.py.

Run (CPU only; nothing here uses a GPU, and `SceneDataset` is safe in DataLoader workers):
  python data.py show --scene data/synthetic/train/scene_0001 --out assets/tracks.png
  python data.py scan --data /data/dl3dv      # scenes per track source, broken ones with the reason

Conventions: OpenCV camera (x right, y down, z forward); `c2w` maps camera to world; the centre of
pixel (i, j) is at (i + 0.5, j + 0.5) (COLMAP/nerfstudio); depth is z-depth in pose units, 0 = invalid.
F frames, N query points, H x W image size.

References:
  GASP, "Beyond 3D VQAs: Injecting 3D Spatial Priors into Vision-Language Models", CVPR 2026
  DL3DV-10K: https://arxiv.org/abs/2312.16256, https://github.com/DL3DV-10K/Dataset
  nerfstudio conventions: https://docs.nerf.studio/quickstart/data_conventions.html
  COLMAP formats: https://github.com/colmap/colmap/blob/main/scripts/python/read_write_model.py,
    .../read_write_dense.py; camera models: https://colmap.github.io/cameras.html
  VGGT track recipe (0.05 depth check, 4 px margin): https://arxiv.org/abs/2503.11651
"""
import argparse
import glob
import json
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from figures.tracks import draw_tracks
from scenes.frames import read_clip, to_rgb
from scenes.layout import gl_to_cv
from scenes.colmap import (POINT2D, ColmapError, colmap_c2w, colmap_intrinsics, read_cameras_bin, read_colmap_array,
                    read_images_bin, read_points3d_bin)

IMAGE_DIRS = ("images", "images_2", "images_4", "images_8")
CAMERA_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DIST_KEYS = ("k1", "k2", "p1", "p2")
SPARSE_MODEL = "colmap/sparse/0"  # DL3DV ColmapCache: the SfM model at full resolution
MARGIN = 4.0  # px; border margin of the visibility test (VGGT recipe)
REL_TOL = 0.05  # relative depth tolerance of the occlusion test (VGGT recipe)
EPS = 1e-6


# ----------------------------------------------------------------------------- depth maps

class GeometryError(ValueError):
    """Frames, intrinsics and depth that do not share one geometry, e.g. MVS depth of the undistorted
    images `colmap image_undistorter` writes, paired with the distorted originals."""



def read_depth(path, header_only=False):
    """Depth map (H, W) from `.npy` or a COLMAP `.bin`; with header_only, its shape only."""
    try:
        if str(path).endswith(".bin"):
            return read_colmap_array(path, header_only)
        d = np.load(path, mmap_mode="r" if header_only else None)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read depth ({e})") from None
    if d.ndim != 2:
        raise ValueError(f"{path}: depth must be a 2-D (H, W) array, got shape {d.shape}")
    if d.dtype.kind != "f":  # integer depth (16-bit PNG style) is in millimetres or another unit, not the poses'
        raise ValueError(f"{path}: depth must be floating-point z-depth in pose units, got dtype {d.dtype}; "
                         f"convert it (e.g. millimetres / 1000 to metres, times the poses' scale) to float32")
    return d.shape if header_only else d


# ----------------------------------------------------------------------------- reading a scene

@dataclass
class Scene:
    """A video scene: frames sorted by frame index; `image(i)`/`depth(i)` return arrays at `size`.
    source says where tracks come from: "depths" (depths/*.npy beside images_N and transforms.json),
    "dense" (a COLMAP MVS workspace: its images, PINHOLE cameras, poses and depth maps) or "sparse"
    (DL3DV's SfM model colmap/sparse/0: frames from images_N, tracks = the model's keypoints)."""
    path: str
    source: str
    K: np.ndarray  # (F, 3, 3) float64, intrinsics at `size`
    c2w: np.ndarray  # (F, 4, 4) float64, OpenCV camera-to-world
    size: tuple  # (H, W) of what image(i) and depth(i) return
    frame_index: np.ndarray  # (F,) int64, original video frame numbers
    image_files: list
    depth_files: list  # one per frame ("depths", "dense"); empty for "sparse"
    dist: np.ndarray  # (F, 4) OpenCV k1, k2, p1, p2; zeros for a pinhole camera
    source_size: tuple  # (H, W) of the image files read
    sfm_dir: str = ""  # "sparse": the folder holding cameras.bin, images.bin, points3D.bin
    image_ids: np.ndarray = None  # "sparse": (F,) COLMAP image id of each frame
    keypoint_at: np.ndarray = None  # "sparse": (F, 2) byte offset and count of its keypoints in images.bin
    keypoint_scale: np.ndarray = None  # "sparse": (F, 2) COLMAP camera pixels -> pixels at `size`
    invalid_depth: int = 0  # NaN/inf/negative depth pixels zeroed so far
    cache: dict = field(default_factory=dict, repr=False)

    def __len__(self):
        return len(self.image_files)

    def image(self, i):
        """Frame i as uint8 (H, W, 3), bilinear-resized to `size`."""
        if ("image", i) in self.cache:
            return self.cache["image", i]
        try:
            with Image.open(self.image_files[i]) as im:
                rgb = to_rgb(im)
        except (OSError, SyntaxError, EOFError) as e:  # how PIL reports broken files
            raise ValueError(f"{self.image_files[i]}: cannot decode image ({e}); extract the frame again") from None
        if rgb.shape[:2] != self.source_size:
            raise ValueError(f"{self.image_files[i]}: image is {rgb.shape[0]}x{rgb.shape[1]}, the scene's frames "
                             f"are {self.source_size[0]}x{self.source_size[1]} (as its first listed frame); all frames "
                             f"of a scene must have one size: extract this one again")
        return resize_image(rgb, self.size)

    def depth(self, i):
        """Depth of frame i as float32 (H, W), nearest-resized to `size`; NaN/inf/negative -> 0, counted."""
        if ("depth", i) in self.cache:
            return self.cache["depth", i]
        d = read_depth(self.depth_files[i])
        if not _scaled_from(self.source_size, d.shape):
            raise GeometryError(f"{self.depth_files[i]}: depth is {d.shape[0]}x{d.shape[1]}, its image "
                                f"{self.image_files[i]} is {self.source_size[0]}x{self.source_size[1]}: not the "
                                f"same picture at another scale (a few px smaller is a crop, e.g. depth of the "
                                f"undistorted frames), so depth cannot be aligned to the image; write depth maps "
                                f"of these very frames")
        bad = ~np.isfinite(d) | (d < 0)
        if bad.any():
            self.invalid_depth += int(bad.sum())
            d = np.where(bad, 0, d)
        return resize_nearest(d.astype(np.float32), self.size)

    def observations(self, frames):
        """"sparse": for each frame position in `frames`, the keypoints that belong to 3D points, sorted by
        point id: a list of (ids (n,) int64, uv (n, 2) float64 px at `size`, X (n, 3) world points).
        Reads only these frames' keypoints from images.bin and the points table from points3D.bin (kept
        in memory only after `preload`, as a large scene's model takes tens of MB)."""
        points = Path(self.sfm_dir) / "points3D.bin"
        ids, xyz = self.cache["points"] if "points" in self.cache else read_points3d_bin(points)
        order = np.argsort(ids)
        ids, xyz = ids[order], xyz[order]
        path, out = Path(self.sfm_dir) / "images.bin", []
        with open(path, "rb") as f:
            for i in frames:
                if ("observations", i) in self.cache:
                    out.append(self.cache["observations", i])
                    continue
                at, n = self.keypoint_at[i]
                f.seek(at)
                raw = f.read(24 * n)
                if len(raw) != 24 * n:
                    raise ColmapError(f"{path}: truncated: image {self.image_ids[i]}'s keypoints end past the file "
                                      f"(changed since the scene was loaded?)")
                p = np.frombuffer(raw, POINT2D)
                p = p[p["point3D_id"] >= 0]
                p = p[np.argsort(p["point3D_id"], kind="stable")]
                found, row = _lookup(ids, p["point3D_id"])
                if not found.all():
                    raise ColmapError(f"{path}: image {self.image_ids[i]} observes 3D points missing from "
                                      f"points3D.bin: the model files do not belong together")
                out.append((p["point3D_id"], p["xy"] * self.keypoint_scale[i], xyz[row]))
        return out

    def preload(self, indices=None):
        """Decode and resize frames (and read depth or the SfM model) once into memory, so `make_sample`
        then costs sampling only."""
        for i in range(len(self)) if indices is None else indices:
            self.cache["image", i] = self.image(i)
            if self.source != "sparse":
                self.cache["depth", i] = self.depth(i)
        if self.source == "sparse":
            self.cache["points"] = read_points3d_bin(Path(self.sfm_dir) / "points3D.bin")
            frames = range(len(self)) if indices is None else indices
            for i, obs in zip(frames, self.observations(frames)):
                self.cache["observations", i] = obs
        return self



def _check_pose(m, where):
    """m: a rigid 4 x 4 camera-to-world pose (finite, orthonormal rotation, det +1, last row 0 0 0 1)."""
    try:
        m = np.asarray(m, np.float64)
    except (TypeError, ValueError):
        m = np.full(1, np.nan)
    R = m[:3, :3] if m.shape == (4, 4) else np.zeros((3, 3))
    if not (m.shape == (4, 4) and np.isfinite(m).all() and np.allclose(m[3], [0, 0, 0, 1])
            and np.allclose(R.T @ R, np.eye(3), atol=1e-3) and np.linalg.det(R) > 0):
        raise ValueError(f"{where}: pose is not a rigid 4 x 4 camera-to-world transform "
                         f"(singular, scaled, reflected or non-finite): {m.tolist()}")
    return m


def _check_camera(K, dist, wh, where):
    """Intrinsics finite, focal lengths and image size positive."""
    if not (np.isfinite(K).all() and np.isfinite(dist).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"{where}: intrinsics must be finite with positive focal lengths, got "
                         f"fx={K[0, 0]}, fy={K[1, 1]}, cx={K[0, 2]}, cy={K[1, 2]}, distortion {dist.tolist()}")
    if not (wh[0] > 0 and wh[1] > 0):
        raise ValueError(f"{where}: image size must be positive, got w={wh[0]}, h={wh[1]}")


def _scaled_from(big, small):
    """Is `small` (H, W) a downscale of `big` (H, W) by one factor, up to rounding to whole pixels?
    Assumption: a size within 5 % of `big` but more than 1 px off in a side is a crop, not a resize (the
    undistorted frames of MVS or a depth release are a few px smaller than the distorted ones, e.g. 536x954
    beside 540x960), so it is refused."""
    s = big[1] / small[1]
    crop = abs(s - 1) < 0.05 and max(abs(big[0] - small[0]), abs(big[1] - small[1])) > 1
    return abs(big[0] / s - small[0]) <= 1 and not crop


def _frame_order(names):
    """Frame numbers (the last number in each file name, else the listing order) and the sorting order."""
    numbers = [re.findall(r"\d+", Path(n).stem) for n in names]
    index = [int(m[-1]) for m in numbers] if all(numbers) else list(range(len(names)))
    return np.array(index, np.int64), sorted(range(len(names)), key=lambda k: (index[k], names[k]))


def _image_folder(path, name, size, folders=IMAGE_DIRS):
    """The smallest of path/folders holding `name` at least `size` (H, W) big, else the largest.
    -> (folder, (H, W) of its image)."""
    sizes = {}
    for d in folders:
        if (path / d / name).is_file():
            with Image.open(path / d / name) as im:
                sizes[d] = (im.height, im.width)
    if not sizes:
        like = sorted(f"{d}/{f.name}" for d in folders for f in (path / d).glob(f"{glob.escape(Path(name).stem)}.*"))
        hint = f"; found {like[0]}: give each frame's file name with its extension as on disk" if like else ""
        raise FileNotFoundError(f"{path / folders[0] / name}: missing image (looked in {', '.join(folders)}){hint}")
    big = [d for d in sizes if size is not None and sizes[d][0] >= size[0] and sizes[d][1] >= size[1]]
    folder = min(big, key=lambda d: sizes[d][0]) if big else max(sizes, key=lambda d: sizes[d][0])
    return folder, sizes[folder]


def scene_source(path):
    """The track source of a scene folder, in this order: "depths" (depths/*.npy), "dense" (dense/),
    "sparse" (colmap/sparse/0/images.bin)."""
    path = Path(path)
    if (path / "depths").is_dir() and next((path / "depths").glob("*.npy"), None):
        return "depths"
    if (path / "dense").is_dir():
        return "dense"
    if (path / SPARSE_MODEL / "images.bin").is_file():
        return "sparse"
    model = path / SPARSE_MODEL
    text = (f"; {model} holds a text model: convert it with `colmap model_converter --input_path {model} "
            f"--output_path {model} --output_type BIN`" if (model / "images.txt").is_file() else "")
    raise FileNotFoundError(f"{path}: no track source: needs depths/<stem>.npy, a COLMAP dense/ workspace, "
                            f"or DL3DV's SfM model {SPARSE_MODEL}/{{cameras,images,points3D}}.bin{text}")


def load_scene(path, size=None):
    """Read and validate a scene folder (one holding transforms.json), taking frames, intrinsics, poses and
    depth from ONE source (see `scene_source`). size = (H, W) wanted: frames are decoded from the
    smallest image folder at least that big and resized to it; K is scaled to it. size=None: full
    resolution of the largest folder present. Checks: intrinsics finite and positive, sizes positive,
    file paths strings, poses finite and rigid, depth present with some valid pixels (first frame)."""
    path = Path(path)
    if not (path / "transforms.json").is_file():
        raise FileNotFoundError(f"{path / 'transforms.json'}: missing; a scene folder holds a nerfstudio "
                                f"transforms.json next to images*/ (write synthetic scenes with `python -m scenes.synth`)")
    source = scene_source(path)
    scene = {"depths": _load_depths, "dense": _load_dense, "sparse": _load_sparse}[source](path, size)
    if source != "sparse":  # Assumption: one depth map per scene is read here (scans stay cheap); the
        d = scene.depth(0)  # others are checked when a sample reads them (a bad one is replaced, counted)
        scene.invalid_depth = 0  # counts what samples read
        if not (d > 0).any():
            raise ValueError(f"{scene.depth_files[0]}: no valid depth (all zero, negative or non-finite)")
    return scene


def _load_depths(path, size):
    """transforms.json (nerfstudio, OpenGL poses, full-resolution intrinsics) + images_N/ + depths/<stem>.npy."""
    tf = path / "transforms.json"
    try:
        meta = json.loads(tf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{tf}: malformed JSON ({e})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames or not all(
            isinstance(f, dict) and isinstance(f.get("file_path"), str) and "transform_matrix" in f for f in frames):
        raise ValueError(f"{tf}: needs a non-empty 'frames' list whose entries have a file_path string and "
                         f"a transform_matrix")
    if meta.get("camera_model", "OPENCV") not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise ValueError(f"{tf}: camera_model {meta['camera_model']} not supported (OPENCV, PINHOLE, SIMPLE_PINHOLE); "
                         f"undistort the frames and depth maps to a pinhole camera (e.g. a COLMAP dense/ workspace)")
    names = [Path(f["file_path"]).name for f in frames]  # DL3DV says images/ even inside images_4/ packages
    _one_each(names, tf)
    folder, source_size = _image_folder(path, names[0], size)
    H, W = size or source_size
    index, order = _frame_order(names)
    K, c2w, dist, images, depths = [], [], [], [], []
    for k in order:
        fr, where = frames[k], f"{tf} frame {frames[k]['file_path']}"
        cam = {key: fr.get(key, meta.get(key)) for key in CAMERA_KEYS + DIST_KEYS}
        missing = [key for key in CAMERA_KEYS if cam[key] is None]
        if missing:
            raise ValueError(f"{where}: intrinsics {missing} missing (top level or per frame)")
        wrong = [f"{key}={v!r}" for key, v in cam.items()
                 if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
        if wrong:
            raise ValueError(f"{where}: {', '.join(wrong)}: intrinsics must be numbers")
        more = [f"{key}={fr.get(key, meta.get(key))!r}" for key in ("k3", "k4", "k5", "k6")
                if fr.get(key, meta.get(key))]
        if more:  # nerfstudio writes them for COLMAP's FULL_OPENCV camera; dropping them would misplace tracks
            raise ValueError(f"{where}: {', '.join(more)}: only OPENCV distortion (k1, k2, p1, p2) is supported; "
                             f"undistort the frames and depth maps to a pinhole camera (e.g. a COLMAP dense/ "
                             f"workspace)")
        Kf, distf = np.array([[cam["fl_x"], 0, cam["cx"]], [0, cam["fl_y"], cam["cy"]], [0, 0, 1.0]]), \
            np.array([cam[key] or 0.0 for key in DIST_KEYS], np.float64)
        _check_camera(Kf, distf, (cam["w"], cam["h"]), where)
        if not _scaled_from((cam["h"], cam["w"]), source_size):
            raise GeometryError(f"{where}: transforms.json says {cam['h']}x{cam['w']}, but {folder}/ holds "
                                f"{source_size[0]}x{source_size[1]} images: not a downscale of that size")
        K.append(np.diag([W / cam["w"], H / cam["h"], 1.0]) @ Kf)  # exact with pixel centres at +0.5; zero skew
        c2w.append(gl_to_cv(_check_pose(fr["transform_matrix"], where)))
        # Assumption: depths/*.npy are aligned with the distorted images_N frames (OPENCV k1, k2, p1, p2),
        # so unproject/project undistort/distort exactly; a pinhole scene has zeros here.
        dist.append(distf)
        images.append(path / folder / names[k])
        depths.append(path / "depths" / f"{Path(names[k]).stem}.npy")
    _must_exist(images, "image", f"listed in {tf}")
    _must_exist(depths, "depth", "DL3DV ships no depth: write float32 z-depth maps as depths/<image stem>.npy, "
                                 "or remove depths/ to use the SfM model")
    return Scene(str(path), "depths", np.array(K), np.stack(c2w), (H, W), index[order], images, depths,
                 np.array(dist), source_size)


def _one_each(names, where):
    """Frames are found by file name alone: two entries with one name would be one image twice (or two poses)."""
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{where}: file name {twice[0]} is listed more than once ({len(twice)} names are); "
                         f"frames are found by file name, so list each frame once, under a name of its own")


def _must_exist(files, what, fix):
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: missing {what} ({len(missing)} of {len(files)} frames); {fix}")


def _colmap_frames(path, model, size, folders, where):
    """Cameras and poses of a COLMAP model, frames sorted by frame number and matched to image files by
    name. -> image files, index, K at size, dist, c2w, image ids, (byte offset, count) of each image's keypoints
    in images.bin, keypoint scale, (H, W) of the image files, size."""
    cameras = read_cameras_bin(model / "cameras.bin")
    images = read_images_bin(model / "images.bin", keypoints=False)
    if not images:
        raise ValueError(f"{model / 'images.bin'}: no registered image")
    ids = list(images)
    names = [Path(images[i]["name"]).name for i in ids]
    _one_each(names, model / "images.bin")
    index, order = _frame_order(names)
    folder, source_size = _image_folder(path, names[order[0]], size, folders)
    H, W = size or source_size
    K, dist, c2w, scale = [], [], [], []
    for k in order:
        img, at = images[ids[k]], f"{model / 'images.bin'} image {ids[k]} ({names[k]})"
        if img["camera_id"] not in cameras:
            raise ColmapError(f"{at}: camera {img['camera_id']} is not in cameras.bin")
        cam = cameras[img["camera_id"]]
        Kc, dc = colmap_intrinsics(cam, f"{model / 'cameras.bin'} camera {img['camera_id']}")
        _check_camera(Kc, dc, cam[1:3], f"{model / 'cameras.bin'} camera {img['camera_id']}")
        if not _scaled_from((cam[2], cam[1]), source_size):
            raise GeometryError(f"{at}: the camera is {cam[2]}x{cam[1]}, but {folder}/ holds {source_size[0]}x"
                                f"{source_size[1]} images: not a downscale of that size")
        scale.append([W / cam[1], H / cam[2]])
        K.append(np.diag(scale[-1] + [1.0]) @ Kc)
        dist.append(dc)
        c2w.append(colmap_c2w(img))
        _check_pose(c2w[-1], at)
    files = [path / folder / names[k] for k in order]
    _must_exist(files, "image", f"registered in {model / 'images.bin'}; {where}")
    at = np.array([images[ids[k]]["points2D_at"] for k in order], np.int64)  # (F, 2)
    return (files, index[order], np.array(K), np.array(dist), np.stack(c2w), np.array(ids)[order], at,
            np.array(scale), source_size, (H, W))


def _load_dense(path, size):
    """A COLMAP dense workspace (`colmap image_undistorter` + `patch_match_stereo`): frames dense/images/,
    PINHOLE cameras dense/sparse/cameras.bin, poses dense/sparse/images.bin, depth
    dense/stereo/depth_maps/<name>.geometric.bin: image, K and depth share the undistorted geometry."""
    ws = path / "dense"
    need = [ws / "sparse" / "cameras.bin", ws / "sparse" / "images.bin", ws / "images", ws / "stereo" / "depth_maps"]
    if not all(p.exists() for p in need):
        raise GeometryError(f"{ws}: incomplete MVS workspace (needs {', '.join(str(p.relative_to(path)) for p in need)}"
                            f"): its depth maps belong to the undistorted images and cameras image_undistorter "
                            f"writes, never to {'/'.join(IMAGE_DIRS)} with transforms.json; keep the whole workspace "
                            f"or remove dense/")
    files, index, K, dist, c2w, _, _, _, source_size, size = _colmap_frames(
        path, ws / "sparse", size, ("dense/images",), "the dense workspace must be complete")
    if np.any(dist):
        raise GeometryError(f"{ws / 'sparse' / 'cameras.bin'}: cameras are distorted; an image_undistorter "
                            f"workspace holds PINHOLE cameras only")
    depths = [ws / "stereo" / "depth_maps" / f"{f.name}.geometric.bin" for f in files]
    _must_exist(depths, "depth", "run `colmap patch_match_stereo` (geometric consistency) on the workspace")
    return Scene(str(path), "dense", K, c2w, size, index, files, depths, dist, source_size)


def _load_sparse(path, size):
    """DL3DV's SfM model (colmap/sparse/0, full resolution) + frames from images_N/ matched by file name."""
    model = path / SPARSE_MODEL
    with open(model / "points3D.bin", "rb") if (model / "points3D.bin").is_file() else open(os.devnull, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or struct.unpack("<Q", head)[0] == 0:
        raise ValueError(f"{model / 'points3D.bin'}: missing or holds no 3D point: no track can be made")
    files, index, K, dist, c2w, ids, at, scale, source_size, size = _colmap_frames(
        path, model, size, IMAGE_DIRS, f"frames are matched to {'/'.join(IMAGE_DIRS)} by file name")
    return Scene(str(path), "sparse", K, c2w, size, index, files, [], dist, source_size, str(model), ids, at, scale)


# ----------------------------------------------------------------------------- projection math

def _radial_tangential(x, y, dist):
    k1, k2, p1, p2 = np.moveaxis(dist, -1, 0)
    r2 = x * x + y * y
    return 1 + k1 * r2 + k2 * r2 * r2, 2 * p1 * x * y + p2 * (r2 + 2 * x * x), p1 * (r2 + 2 * y * y) + 2 * p2 * x * y


def distort(xy, dist):
    """OpenCV/COLMAP OPENCV model on normalised coordinates, dist = (k1, k2, p1, p2), r² = x² + y²:
    x' = x(1 + k1 r² + k2 r⁴) + 2 p1 x y + p2 (r² + 2x²),  y' = y(1 + k1 r² + k2 r⁴) + p1 (r² + 2y²) + 2 p2 x y.
    xy (..., 2), dist (..., 4) -> (..., 2)."""
    x, y = xy[..., 0], xy[..., 1]
    radial, dx, dy = _radial_tangential(x, y, dist)
    return np.stack([x * radial + dx, y * radial + dy], -1)


def undistort(xy_d, dist, iters=20):
    """Inverse of `distort` by OpenCV's fixed-point iteration x <- (x_d - tangential(x)) / radial(x)."""
    x, y = xy_d[..., 0], xy_d[..., 1]
    for _ in range(iters):
        radial, dx, dy = _radial_tangential(x, y, dist)
        x, y = (xy_d[..., 0] - dx) / radial, (xy_d[..., 1] - dy) / radial
    return np.stack([x, y], -1)


def unproject(uv, z, K, dist=None):
    """Pixels to camera points: X = z · K⁻¹ [u, v, 1]ᵀ (undistorting K⁻¹[u, v, 1]ᵀ first when dist is nonzero).
    uv (..., N, 2), z (..., N), K (..., 3, 3), dist (..., 4) -> X (..., N, 3)."""
    xy = (uv - K[..., None, :2, 2]) / K[..., None, [0, 1], [0, 1]]  # (..., N, 2)
    if dist is not None and np.any(dist):
        xy = undistort(xy, dist[..., None, :])
    return np.concatenate([xy, np.ones_like(xy[..., :1])], -1) * z[..., None]


def cam_to_world(X, c2w):
    """X_w = R X + t, with c2w = [R | t]. X (..., N, 3), c2w (..., 4, 4) -> (..., N, 3)."""
    return X @ np.swapaxes(c2w[..., :3, :3], -1, -2) + c2w[..., None, :3, 3]


def world_to_cam(X, c2w):
    """X_c = Rᵀ (X_w - t). X (..., N, 3), c2w (..., 4, 4) -> (..., N, 3)."""
    return (X - c2w[..., None, :3, 3]) @ c2w[..., :3, :3]


def project(X, K, dist=None):
    """Camera points to pixels: (u, v) = (f_x X/Z + c_x, f_y Y/Z + c_y), distorting (X/Z, Y/Z) first when dist
    is nonzero. X (..., N, 3), K (..., 3, 3) -> uv (..., N, 2) (NaN where Z <= 0), z (..., N)."""
    z = X[..., 2]
    xy = X[..., :2] / np.where(z > EPS, z, np.nan)[..., None]
    if dist is not None and np.any(dist):
        xy = distort(xy, dist[..., None, :])
    return xy * K[..., None, [0, 1], [0, 1]] + K[..., None, :2, 2], z


def lookup_depth(depth, uv):
    """D(p): depth of the pixel (⌊u⌋, ⌊v⌋) containing p, clamped to the image; 0 where p is NaN.
    depth (F, H, W), uv (F, N, 2) -> (F, N). Assumption: nearest pixel, never mixing depths across edges."""
    F, H, W = depth.shape
    ok = np.isfinite(uv).all(-1)
    u = np.clip(np.floor(np.where(ok, uv[..., 0], 0)), 0, W - 1).astype(np.intp)
    v = np.clip(np.floor(np.where(ok, uv[..., 1], 0)), 0, H - 1).astype(np.intp)
    return np.where(ok, depth[np.arange(F)[:, None], v, u], 0)


def visibility(uv, z, d, size, margin=MARGIN, rel_tol=REL_TOL):
    """visible = margin <= u <= W - margin and margin <= v <= H - margin, z > 0, D(p) > 0, and
    |z - D(p)| <= rel_tol · min(z, D(p)). uv (..., 2), z (...), d = D(p) (...) -> bool (...)."""
    H, W = size
    u, v = uv[..., 0], uv[..., 1]
    inside = (u >= margin) & (u <= W - margin) & (v >= margin) & (v <= H - margin)
    return inside & (z > EPS) & (d > 0) & (np.abs(z - d) <= rel_tol * np.minimum(z, d))


def track(query_uv, anchor, depth, K, c2w, margin=MARGIN, rel_tol=REL_TOL, dist=None):
    """Ground-truth tracks of the anchor frame's query points through all F frames.
    query_uv (N, 2) px in frame `anchor`; depth (F, H, W); K (F, 3, 3); c2w (F, 4, 4) OpenCV; dist (F, 4).
    Returns tracks (F, N, 2) float32 px, track_depth (F, N) float32 (z in each camera), visible (F, N) bool.
    Anchor row: tracks = query_uv, visible where the anchor depth is valid. In other frames, points with
    no projection (invalid anchor depth, or behind the camera) get tracks (-1, -1) and depth 0."""
    uv_a = np.asarray(query_uv, np.float64)
    z_a = lookup_depth(depth[anchor][None], uv_a[None])[0]  # (N,)
    X_w = cam_to_world(unproject(uv_a, z_a, K[anchor], None if dist is None else dist[anchor]), c2w[anchor])
    uv, z = project(world_to_cam(X_w, c2w), K, dist)  # (F, N, 2), (F, N)
    visible = visibility(uv, z, lookup_depth(depth, uv), depth.shape[1:], margin, rel_tol) & (z_a > 0)
    uv[anchor], z[anchor], visible[anchor] = uv_a, z_a, z_a > 0
    defined = (z_a > 0) & (z > EPS)  # (F, N)
    defined[anchor] = True
    return (np.where(defined[..., None], uv, -1.0).astype(np.float32),
            np.where(defined, z, 0.0).astype(np.float32), visible)


# ----------------------------------------------------------------------------- training samples

def resize_image(image, size):
    """uint8 (h, w, 3) -> (H, W, 3), bilinear (PIL)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(size[::-1]), Image.BILINEAR))


def resize_nearest(depth, size):
    """(h, w) -> (H, W): output pixel centre (j + 0.5)·h/H falls in input row ⌊(j + 0.5)·h/H⌋ (same for columns)."""
    (h, w), (H, W) = depth.shape, size
    if (h, w) == (H, W):
        return depth
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.intp), w - 1)
    return depth.take(rows, 0).take(cols, 1)


def query_lattice(size, lattices=(8, 24)):
    """Query points: cell centres ((c + 0.5)·W/g, (r + 0.5)·H/g) of g x g lattices over an H x W image, in
    order of `lattices`, row-major within a lattice. -> (N, 2) px, N = Σ g²."""
    H, W = size
    points = []
    for g in lattices:
        v, u = np.meshgrid((np.arange(g) + 0.5) * H / g, (np.arange(g) + 0.5) * W / g, indexing="ij")
        points.append(np.stack([u.ravel(), v.ravel()], -1))
    return np.concatenate(points)  # (N, 2)


def choose_frames(frame_index, rng, num_frames, window=48, anchor=None, contiguous=False, name="scene"):
    """Frames of one sample (paper: anchor t_a, then F-1 frames uniformly from [t_a - 48, t_a + 48]).
    frame_index (n,) ascending. Returns (positions (F,) ascending, position of the anchor among them).
    contiguous: F consecutive frames starting at the anchor. A random anchor is drawn among the frames
    whose window holds enough frames. Assumption: the window counts original frame numbers, not positions."""
    n, F = len(frame_index), num_frames
    if F > n:
        raise ValueError(f"{name}: has {n} frames, the sample asks for {F}")
    if contiguous:
        a = int(rng.integers(n - F + 1)) if anchor is None else anchor
        if a < 0 or a + F > n:  # a negative position would wrap around to the last frames
            raise ValueError(f"{name}: {F} consecutive frames from position {a} do not fit in its {n} frames")
        return np.arange(a, a + F), 0
    lo = np.searchsorted(frame_index, frame_index - window, "left")  # (n,) window bounds, as positions
    hi = np.searchsorted(frame_index, frame_index + window, "right")
    ok = np.flatnonzero(hi - lo - 1 >= F - 1)
    if anchor is None and len(ok):
        anchor = int(rng.choice(ok))
    if anchor is None or anchor not in ok:
        raise ValueError(f"{name}: no {'' if anchor is None else f'frame {anchor} as '}anchor has {F - 1} "
                         f"other frames within +-{window} frames")
    others = np.delete(np.arange(lo[anchor], hi[anchor]), anchor - lo[anchor])
    ids = np.sort(np.append(rng.choice(others, F - 1, replace=False), anchor))
    return ids, int(np.searchsorted(ids, anchor))


def _lookup(sorted_ids, ids):
    """Where ids (n,) sit in sorted_ids (m,): found (n,) bool and positions (n,) (valid where found)."""
    at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    return (sorted_ids[at] == ids if len(sorted_ids) else np.zeros(len(ids), bool)), at


def sparse_tracks(scene, ids, anchor, size, lattices, K, c2w, dist):
    """Tracks from the SfM model alone (no depth map): the anchor frame's keypoints that belong to 3D points,
    at most one per cell of each g x g lattice (the lattices' budget, N <= Σ g²); tracks[f] = the same 3D point's
    keypoint in frame f, visible = COLMAP observed it there; where it was not observed, its projection
    (-1 behind the camera), as `track` gives for hidden points. track_depth = the point's z in each camera.
    depth (F, H, W) = z of every observed point at its pixel (the nearest if several), 0 elsewhere.
    ids (F,) frame positions; K (F, 3, 3) and c2w (F, 4, 4) at `size`; dist (F, 4).
    -> depth (F, H, W), tracks (F, N, 2), track_depth (F, N), visible (F, N)."""
    H, W = size
    to_size = np.array([W / scene.size[1], H / scene.size[0]])
    obs = scene.observations(ids)
    pixel, zs = [], []  # flat (frame, row, column) index and camera z of every observation
    for f, (_, uv, X) in enumerate(obs):
        u, v = np.floor(uv * to_size).astype(np.intp).T
        z = world_to_cam(X, c2w[f])[:, 2]
        ok = (z > EPS) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        pixel.append((f * H + v[ok]) * W + u[ok])
        zs.append(z[ok])
    order = np.argsort(np.concatenate(pixel))
    pixel, zs = np.concatenate(pixel)[order], np.concatenate(zs)[order]  # grouped by pixel
    start = np.flatnonzero(np.r_[True, pixel[1:] != pixel[:-1]])
    depth = np.zeros((len(ids), H, W), np.float32)
    depth.reshape(-1)[pixel[start]] = np.minimum.reduceat(zs, start) if len(zs) else 0  # nearest per pixel
    pid, uv_a, X_a = obs[anchor]
    uv_a = uv_a * to_size
    seen = np.zeros(len(pid), np.int64)  # (n,) other frames of the sample observing each point
    for f in range(len(ids)):
        seen += _lookup(obs[f][0], pid)[0] if f != anchor else 0
    # Assumption: in each cell, the keypoint seen in the most other frames of the sample, then the one
    # nearest the cell centre (the paper's lattice queries, moved to where the SfM model has points).
    chosen = np.zeros(len(pid), bool)
    query = []
    for g in lattices:
        cell_uv = np.minimum(np.floor(uv_a / [W / g, H / g]), g - 1)  # (n, 2)
        cell = (cell_uv[:, 1] * g + cell_uv[:, 0]).astype(np.int64)
        off = np.linalg.norm(uv_a - (cell_uv + 0.5) * [W / g, H / g], axis=1)
        free = np.flatnonzero(~chosen)
        order = free[np.lexsort((off[free], -seen[free], cell[free]))]
        _, first = np.unique(cell[order], return_index=True)
        query.append(order[first])  # row-major cells
        chosen[order[first]] = True
    q = np.concatenate(query) if query else np.zeros(0, np.intp)  # (N,) rows of the anchor's observations
    uv, z = project(world_to_cam(X_a[q], c2w), K, dist)  # (F, N, 2), (F, N)
    tracks, visible = np.where((z > EPS)[..., None], uv, -1.0), np.zeros(z.shape, bool)
    for f, (pid_f, uv_f, _) in enumerate(obs):
        visible[f], at = _lookup(pid_f, pid[q])
        tracks[f, visible[f]] = uv_f[at[visible[f]]] * to_size
    visible[anchor] = True
    return depth, tracks.astype(np.float32), np.where(z > EPS, z, 0.0).astype(np.float32), visible


def make_sample(scene, rng, num_frames, size=None, lattices=(8, 24), window=48, anchor=None,
                contiguous=False, margin=MARGIN, keep=1.0):
    """One training sample, the data contract: frames (F, H, W, 3) uint8, depth (F, H, W) float32 (0 =
    invalid), K (F, 3, 3), c2w (F, 4, 4) float32, frame_index (F,) int64, tracks (F, N, 2), track_depth
    (F, N) float32, visible (F, N) bool; plus anchor (position of the anchor frame) and scene (path).
    Frames in temporal order; size=None keeps scene.size. Query points: the anchor frame's lattices
    (depth sources) or its SfM keypoints spread over the same lattices (`sparse_tracks`). Raises ValueError if
    anything came out non-finite. keep < 1: only that fraction of the tracks, those visible in the most frames
    (the VGGT track recipe's last step keeps the half visible longest).
    Assumption: frames are resized to `size`, not cropped (K scaled per axis), as the paper gives no crop.
    Assumption: keep = 1 by default (every track): the recipe's step 3 is an option (train.py --keep-tracks 0.5)."""
    ids, a = choose_frames(scene.frame_index, rng, num_frames, window, anchor, contiguous, scene.path)
    H, W = size = tuple(size or scene.size)
    frames = np.stack([resize_image(scene.image(i), size) for i in ids])  # (F, H, W, 3)
    K = scene.K[ids] * np.array([[W / scene.size[1]], [H / scene.size[0]], [1.0]])  # diag(sx, sy, 1) · K
    c2w = scene.c2w[ids]
    if scene.source == "sparse":
        depth, tracks, track_depth, visible = sparse_tracks(scene, ids, a, size, lattices, K, c2w, scene.dist[ids])
    else:
        depth = np.stack([resize_nearest(scene.depth(i), size) for i in ids])  # (F, H, W)
        tracks, track_depth, visible = track(query_lattice(size, lattices), a, depth, K, c2w, margin,
                                             dist=scene.dist[ids])
    if keep < 1:
        longest = np.sort(np.argsort(-visible.sum(0), kind="stable")[: max(1, round(keep * visible.shape[1]))])
        tracks, track_depth, visible = tracks[:, longest], track_depth[:, longest], visible[:, longest]
    sample = dict(frames=frames, depth=depth, K=K.astype(np.float32), c2w=c2w.astype(np.float32),
                  frame_index=scene.frame_index[ids], tracks=tracks, track_depth=track_depth,
                  visible=visible, anchor=a, scene=scene.path)
    bad = [k for k in ("depth", "K", "c2w", "tracks", "track_depth") if not np.isfinite(sample[k]).all()]
    if bad:
        raise ValueError(f"{scene.path}: non-finite {', '.join(bad)} in the sample of frames "
                         f"{scene.frame_index[ids].tolist()}; check its intrinsics, poses and depth")
    return sample


def find_scenes(root):
    """Scene folders under root (each holds transforms.json; symlinked folders are followed, each real
    folder is visited once), and the folders that hold neither transforms.json nor a scene below them.
    -> (scenes, folders without transforms.json), both sorted lists of Paths."""
    scenes, missing, seen = [], [], set()

    def walk(d):  # -> True if d is or holds a scene
        real = os.path.realpath(d)
        if real in seen:
            return True  # a second link to a folder already visited, or a loop: nothing new here
        seen.add(real)
        if (d / "transforms.json").is_file():
            scenes.append(d)
            return True
        try:
            found = {p: walk(p) for p in sorted(d.iterdir()) if p.is_dir()}
        except OSError:  # unreadable folder: listed with the folders that hold no scene
            return False
        if any(found.values()):
            missing.extend(p for p, ok in found.items() if not ok)
        return any(found.values())

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (--data must be a folder of scene folders)")
    if not walk(root):
        missing.append(root)
    return sorted(scenes), sorted(missing)


def scan(root, size=None, num_frames=1, window=48, contiguous=False, preload=False):
    """Validate every scene under root (one `load_scene` each, and enough frames for a sample): a failing
    scene is listed with its reason, whatever the exception. tqdm bar on a terminal.
    -> (scenes, broken [(folder, reason)], folders without transforms.json)."""
    dirs, missing = find_scenes(root)
    scenes, broken = [], []
    for d in tqdm(dirs, desc=f"scanning {root}", disable=None, leave=False):
        try:
            scene = load_scene(d, size)
            choose_frames(scene.frame_index, np.random.default_rng(0), num_frames, window,
                          contiguous=contiguous, name=str(d))  # raises if too few frames
            scenes.append(scene.preload() if preload else scene)
        except Exception as e:  # one bad scene never stops the scan
            reason = str(e) if isinstance(e, (OSError, ValueError)) else f"{type(e).__name__}: {e}"
            broken.append((d, reason))
    return scenes, broken, missing


class SceneDataset(torch.utils.data.Dataset):
    """Samples from every scene folder (one holding transforms.json) under `root`, searched recursively.
    Item k is a pure function of (seed, k): scene k mod #scenes, F ~ U{num_frames}, frames and anchor.
    A candidate with no track visible in the anchor and another frame, or whose files fail to read, is
    replaced by the next candidate (scene k + j, rng (seed, k, j)), counted in `skipped["samples"]` and
    warned once per scene; each item says how many candidates it replaced in item["replaced"].
    Items have different F, so batch them with batch_size=None or a list-returning collate_fn.
    Picklable and cheap in DataLoader workers: the scan happens once, here."""

    def __init__(self, root, size=(336, 336), num_frames=(8, 24), lattices=(8, 24), window=48, seed=0,
                 length=None, contiguous=False, preload=False, max_tries=8, keep=1.0):
        self.size, self.lattices, self.window, self.seed, self.contiguous = tuple(size), lattices, window, seed, contiguous
        self.num_frames = (num_frames, num_frames) if isinstance(num_frames, int) else tuple(num_frames)
        self.max_tries, self.keep = max_tries, keep
        self.scenes, broken, self.missing = scan(root, self.size, self.num_frames[1], window, contiguous, preload)
        for d, reason in broken:
            print(f"warning: skipping scene {d}: {reason}", file=sys.stderr)
        for d in self.missing:
            print(f"warning: skipping folder {d}: no transforms.json in it or below it", file=sys.stderr)
        self.broken = broken
        self.skipped = {"scenes": len(broken), "folders": len(self.missing), "samples": 0}
        self.sources = {s: sum(sc.source == s for sc in self.scenes) for s in ("depths", "dense", "sparse")}
        if broken or self.missing:
            print(f"warning: skipped {len(broken)} of {len(broken) + len(self.scenes)} scenes and "
                  f"{len(self.missing)} folders without transforms.json under {root}", file=sys.stderr)
        if not self.scenes:
            raise FileNotFoundError(f"{root}: no usable scene (a folder with transforms.json, images*/ and depth "
                                    f"or a COLMAP model); write synthetic ones with `python -m scenes.synth --out {root}`")
        self.length = length or 100 * len(self.scenes)
        self.warned = set()

    def __len__(self):
        return self.length

    def __getitem__(self, k):
        for j in range(self.max_tries):
            rng = np.random.default_rng([self.seed, k] if j == 0 else [self.seed, k, j])
            scene = self.scenes[(k + j) % len(self.scenes)]
            F = int(rng.integers(self.num_frames[0], self.num_frames[1] + 1))
            try:
                s = make_sample(scene, rng, F, self.size, self.lattices, self.window, contiguous=self.contiguous,
                                keep=self.keep)
                a = s["anchor"]
                if (s["visible"][a] & np.delete(s["visible"], a, 0).any(0)).any():
                    s["replaced"] = j
                    return s
                reason = "no track is visible in the anchor and another frame"
            except (OSError, ValueError) as e:  # missing or undecodable files, bad depth
                reason = str(e)
            self.skipped["samples"] += 1
            if scene.path not in self.warned:
                self.warned.add(scene.path)
                print(f"warning: item {k}: replacing a sample of {scene.path} (warned once per scene): {reason}",
                      file=sys.stderr)
        raise RuntimeError(f"item {k}: {self.max_tries} candidates in a row gave no usable sample (last: "
                           f"{reason}); check the scenes with `python data.py scan --data ROOT`")


# ----------------------------------------------------------------------------- instruction data (L_LM stream)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


class InstructionDataset:
    """LLaVA conversation JSON (LLaVA-Video-178K style): a list of {"id", "video" or "image",
    "conversations": [{"from": "human", "value": "<video>\\n..."}, {"from": "gpt", "value": "..."}]}.
    Item i -> (frames (F, H, W, 3) uint8, prompt, answer). A video is a folder of images or a video file.
    Assumption: only the first human/gpt turn is used; the <image>/<video> placeholder is dropped
    (the model's processor puts the frames before the text)."""

    def __init__(self, path, root=None, num_frames=8):
        path = Path(path)
        try:
            items = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable LLaVA conversation JSON ({e})") from e
        self.root = Path(root) if root else path.parent
        self.num_frames = num_frames if isinstance(num_frames, int) else max(num_frames)
        self.items = []
        for k, it in enumerate(items if isinstance(items, list) else []):
            turns = it.get("conversations", [])
            media = it.get("video") or it.get("image")
            if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt" or not media:
                raise ValueError(f"{path}: item {k} (id {it.get('id')!r}) needs 'video' or 'image' and "
                                 f"conversations [human, gpt, ...]")
            self.items.append(it)
        if not self.items:
            raise ValueError(f"{path}: expected a non-empty JSON list of conversations")

    def __len__(self):
        return len(self.items)

    def frames(self, media):
        paths = [self.root / m for m in (media if isinstance(media, list) else [media])]
        if len(paths) == 1 and (paths[0].is_dir() or paths[0].suffix.lower() in VIDEO_EXTS):
            return read_clip(paths[0], self.num_frames)
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing image or video (paths are relative to {self.root})")
        return [to_rgb(Image.open(p)) for p in paths]

    def __getitem__(self, i):
        it = self.items[i]
        prompt = re.sub(r"<(image|video)>\n?", "", it["conversations"][0]["value"]).strip()
        return self.frames(it.get("video") or it.get("image")), prompt, it["conversations"][1]["value"]


# ----------------------------------------------------------------------------- the tracks figure and command line

def show(scene_dir, out, num_frames=4, stride=None, lattice=8, size=336, anchor=0):
    """The paper's training-data figure for one scene (drawn by figures/tracks.py): top row frames with the
    anchor frame's tracks as dots (one colour per query point of a lattice x lattice lattice, drawn where
    visible), bottom row depth maps. Frames are `stride` apart from the anchor (None: 12, or less where the
    scene is shorter). -> out."""
    scene = load_scene(scene_dir, (size, size))
    stride = stride or max(1, min(12, (len(scene) - 1 - anchor) // max(num_frames - 1, 1)))
    span = 1 + stride * (num_frames - 1)
    if anchor < 0 or anchor + span > len(scene):
        raise ValueError(f"{scene_dir}: {num_frames} frames {stride} apart from position {anchor} span {span} frames, "
                         f"the scene has {len(scene)}; lower --frames, --stride or --anchor")
    s = make_sample(scene, np.random.default_rng(0), span, (size, size), lattices=(lattice,), anchor=anchor,
                    contiguous=True)  # N = lattice² tracks for depth sources, at most that for the SfM model
    shown = np.arange(0, span, stride)  # sample positions drawn; the anchor is position 0
    return draw_tracks(out, s["frames"][shown], s["depth"][shown], s["tracks"][shown], s["visible"][shown],
                       s["frame_index"][shown], shown - s["anchor"], sparse_depth=scene.source == "sparse")


def main(argv=None):
    p = argparse.ArgumentParser(description="DL3DV-format scenes for GASP: the tracks figure and a scan of a data root. "
                                            "(Synthetic scenes: python -m scenes.synth --help.)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("show", help="draw frames with tracks (top) and depth (bottom) for one scene",
                       description="Draw the paper's training-data figure for one scene folder; prints its track source.")
    b.add_argument("--scene", required=True, help="scene folder (holds transforms.json)")
    b.add_argument("--out", default="tracks.png", help="output PNG")
    b.add_argument("--frames", type=int, default=4, help="number of frames (columns)")
    b.add_argument("--stride", type=int, default=None, help="frame gap between columns (default: 12, less where "
                                                             "the scene is shorter)")
    b.add_argument("--lattice", type=int, default=8, help="query points on a lattice x lattice lattice of the "
                                                           "anchor frame")
    b.add_argument("--size", type=int, default=336, help="frame size in pixels")
    b.add_argument("--anchor", type=int, default=0, help="position of the anchor frame (first column)")
    c = sub.add_parser("scan", help="validate every scene under a root: counts per track source, broken scenes",
                       description="Load and validate every scene folder under --data (as training does) and "
                                   "print how many use each track source and which are broken, with the reason.")
    c.add_argument("--data", required=True, help="folder of scene folders (searched recursively, symlinks followed)")
    c.add_argument("--size", type=int, default=336, help="frame size in pixels the scenes are checked at")
    args = p.parse_args(argv)
    if args.command == "show":
        for flag in ("frames", "stride", "lattice", "size"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                p.error(f"--{flag} must be positive, got {getattr(args, flag)}")
        if args.anchor < 0:
            p.error(f"--anchor must be a frame position >= 0, got {args.anchor}")
    try:  # a bad scene or root is one line naming the file, not a traceback
        if args.command == "show":
            source = scene_source(args.scene) if Path(args.scene).is_dir() else "none"
            print(f"{args.scene}: track source {source}")
            print(f"wrote {show(args.scene, args.out, args.frames, args.stride, args.lattice, args.size, args.anchor)}")
            return
        scenes, broken, missing = scan(args.data, (args.size, args.size))
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    counts = {s: sum(sc.source == s for sc in scenes) for s in ("depths", "dense", "sparse")}
    print(f"{args.data}: {len(scenes)} usable scenes ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
          f"{len(broken)} broken, {len(missing)} folders without transforms.json")
    for d, reason in broken:
        print(f"  broken {d}: {reason}")
    for d in missing:
        print(f"  no transforms.json: {d}")


if __name__ == "__main__":
    main()

