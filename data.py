"""DL3DV scenes, ground-truth point tracks from depth + pose, and synthetic scenes in DL3DV layout.

GASP supervises its per-layer correspondence heads with point tracks and depth from DL3DV video
scenes (paper Sec. 3 "3D Scenes" branch; DESIGN.md "Data contract"). This file is that pipeline:

  1. `load_scene`: a DL3DV scene folder (nerfstudio `transforms.json`, `images{,_2,_4,_8}/`, depth)
     -> `Scene`, poses converted once from nerfstudio/OpenGL to OpenCV.
  2. Projection math, one function per step: `unproject`, `cam_to_world`, `world_to_cam`, `project`,
     `visibility` (inside by a margin, in front, |z_proj - D(p)| <= 0.05 min(z_proj, D(p))).
  3. `track`: where the anchor frame's query points land in every frame of a sample.
  4. `make_sample` / `SceneDataset`: an anchor frame, F-1 frames from a +-48 frame window, query
     points on 8x8 and 24x24 grids of the anchor frame (the paper's recipe), as the DESIGN.md dict.
  5. `synth_scene` / `make_synthetic`: textured rooms with boxes (including look-alike boxes at
     different depths), smooth camera paths and exact depth, written in the DL3DV layout and read
     back through the same `load_scene`.

Run (CPU only; nothing here uses a GPU, and `SceneDataset` is safe in DataLoader workers):
  python data.py synth --out data/synthetic/train --scenes 8      # ~11 s per 64-frame 448 px scene
  python data.py show --scene data/synthetic/train/scene_0001 --out assets/tracks.png

Conventions: OpenCV camera (x right, y down, z forward); `c2w` maps camera to world; the centre of
pixel (i, j) is at (i + 0.5, j + 0.5) (COLMAP/nerfstudio); depth is z-depth in pose units, 0 = invalid.
F frames, N query points, H x W image size. DL3DV ships no depth: per frame, `depths/<image stem>.npy`
(float32) is read, else COLMAP MVS `dense/stereo/depth_maps/<image name>.geometric.bin`.

References:
  GASP, "Beyond 3D VQAs: Injecting 3D Spatial Priors into Vision-Language Models", CVPR 2026
  DL3DV-10K: https://arxiv.org/abs/2312.16256, https://github.com/DL3DV-10K/Dataset
  nerfstudio conventions: https://docs.nerf.studio/quickstart/data_conventions.html
  COLMAP arrays: https://github.com/colmap/colmap/blob/main/scripts/python/read_write_dense.py
  VGGT track recipe (0.05 depth check, 4 px margin): https://arxiv.org/abs/2503.11651
"""
import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # c2w_cv = c2w_gl @ GL_TO_CV (flips camera y, z); its own inverse
IMAGE_DIRS = ("images", "images_2", "images_4", "images_8")
CAMERA_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DIST_KEYS = ("k1", "k2", "p1", "p2")
MARGIN = 4.0  # px; border margin of the visibility test (VGGT recipe)
REL_TOL = 0.05  # relative depth tolerance of the occlusion test (VGGT recipe)
EPS = 1e-6


# ----------------------------------------------------------------------------- reading a scene

@dataclass
class Scene:
    """A video scene: frames sorted by frame index; `image(i)`/`depth(i)` return arrays at `size`."""
    path: str
    K: np.ndarray  # (F, 3, 3) float64, intrinsics at `size`
    c2w: np.ndarray  # (F, 4, 4) float64, OpenCV camera-to-world
    size: tuple  # (H, W) of what image(i) and depth(i) return
    frame_index: np.ndarray  # (F,) int64, original video frame numbers
    image_files: list
    depth_files: list
    dist: np.ndarray  # (F, 4) OpenCV k1, k2, p1, p2; zeros for a pinhole camera
    source_size: tuple  # (H, W) of the image files read
    invalid_depth: int = 0  # NaN/inf/negative depth pixels zeroed so far
    cache: dict = field(default_factory=dict, repr=False)

    def __len__(self):
        return len(self.image_files)

    def image(self, i):
        """Frame i as uint8 (H, W, 3), bilinear-resized to `size`."""
        if ("image", i) in self.cache:
            return self.cache["image", i]
        with Image.open(self.image_files[i]) as im:
            if im.size[::-1] != self.source_size:
                raise ValueError(f"{self.image_files[i]}: image is {im.height}x{im.width}, the scene's "
                                 f"first frame is {self.source_size[0]}x{self.source_size[1]}")
            return resize_image(np.asarray(im.convert("RGB")), self.size)

    def depth(self, i):
        """Depth of frame i as float32 (H, W), nearest-resized to `size`; NaN/inf/negative -> 0, counted."""
        if ("depth", i) in self.cache:
            return self.cache["depth", i]
        d = read_depth(self.depth_files[i])
        bad = ~np.isfinite(d) | (d < 0)
        if bad.any():
            self.invalid_depth += int(bad.sum())
            d = np.where(bad, 0, d)
        return resize_nearest(d.astype(np.float32), self.size)

    def preload(self, indices=None):
        """Decode and resize frames once into memory, so `make_sample` then costs sampling only."""
        for i in range(len(self)) if indices is None else indices:
            self.cache["image", i], self.cache["depth", i] = self.image(i), self.depth(i)
        return self


def gl_to_cv(c2w):
    """nerfstudio/OpenGL camera (y up, z back) -> OpenCV (y down, z forward): c2w_cv = c2w_gl · diag(1,-1,-1,1).
    The same product converts back. c2w (..., 4, 4)."""
    return c2w @ GL_TO_CV


def read_colmap_array(path, header_only=False):
    """A COLMAP MVS array (`*.geometric.bin`): ASCII "width&height&channels&", then float32 values in
    column-major order. Returns (H, W) or (H, W, C) float32; with header_only, just that shape."""
    with open(path, "rb") as f:
        head = f.read(64)
        parts = head.split(b"&", 3)
        try:
            w, h, c = (int(p) for p in parts[:3])
            assert len(parts) == 4 and min(w, h, c) > 0
        except (ValueError, AssertionError):
            raise ValueError(f"{path}: not a COLMAP array (header must be 'width&height&channels&')") from None
        shape = (h, w) if c == 1 else (h, w, c)
        if header_only:
            return shape
        f.seek(len(head) - len(parts[3]))
        data = np.fromfile(f, np.float32)
    if data.size != w * h * c:
        raise ValueError(f"{path}: header says {w}x{h}x{c} values, the file holds {data.size}")
    return data.reshape((w, h, c), order="F").transpose(1, 0, 2).reshape(shape)


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
    return d.shape if header_only else d


def _same_aspect(a, b, tol=0.02):
    return abs(a[0] * b[1] / (a[1] * b[0]) - 1) <= tol


def _check_pose(m, where):
    R = m[:3, :3]
    if not (m.shape == (4, 4) and np.isfinite(m).all() and np.allclose(m[3], [0, 0, 0, 1])
            and np.allclose(R.T @ R, np.eye(3), atol=1e-3) and np.linalg.det(R) > 0):
        raise ValueError(f"{where}: transform_matrix is not a rigid camera-to-world pose "
                         f"(singular, scaled, reflected or non-finite): {m.tolist()}")


def load_scene(path, size=None):
    """Read a DL3DV scene folder. size = (H, W) wanted: frames are decoded from the smallest of
    images/, images_2/, images_4/, images_8/ at least that big and resized to it; K is scaled to it.
    size=None: full resolution of the largest folder present."""
    path = Path(path)
    tf = path / "transforms.json"
    if not tf.is_file():
        raise FileNotFoundError(f"{tf}: missing; a scene folder holds a nerfstudio transforms.json next to "
                                f"images*/ (write synthetic scenes with `python data.py synth`)")
    try:
        meta = json.loads(tf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{tf}: malformed JSON ({e})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames or not all(
            isinstance(f, dict) and "file_path" in f and "transform_matrix" in f for f in frames):
        raise ValueError(f"{tf}: needs a non-empty 'frames' list whose entries have file_path and transform_matrix")
    if meta.get("camera_model", "OPENCV") not in ("OPENCV", "PINHOLE"):
        raise ValueError(f"{tf}: camera_model {meta['camera_model']} not supported (OPENCV or PINHOLE)")
    names = [Path(f["file_path"]).name for f in frames]  # DL3DV says images/ even inside images_4/ packages
    sizes = {}  # folder -> (H, W) of its first frame
    for d in IMAGE_DIRS:
        if (path / d / names[0]).is_file():
            with Image.open(path / d / names[0]) as im:
                sizes[d] = (im.height, im.width)
    if not sizes:
        raise FileNotFoundError(f"{path / IMAGE_DIRS[0] / names[0]}: missing image (first frame of {tf}; "
                                f"looked in {', '.join(IMAGE_DIRS)})")
    big = [d for d in sizes if size is not None and sizes[d][0] >= size[0] and sizes[d][1] >= size[1]]
    folder = min(big, key=lambda d: sizes[d][0]) if big else max(sizes, key=lambda d: sizes[d][0])
    H, W = size or sizes[folder]

    # Frame order: by the number in the file name (DL3DV's frames[] follows COLMAP ids), else as listed.
    numbers = [re.findall(r"\d+", Path(n).stem) for n in names]
    index = [int(m[-1]) for m in numbers] if all(numbers) else list(range(len(names)))
    order = sorted(range(len(frames)), key=lambda k: (index[k], names[k]))
    K, c2w, dist, images, depths, no_depth = [], [], [], [], [], []
    for k in order:
        fr, where = frames[k], f"{tf} frame {frames[k]['file_path']}"
        cam = {key: fr.get(key, meta.get(key)) for key in CAMERA_KEYS + DIST_KEYS}
        missing = [key for key in CAMERA_KEYS if cam[key] is None]
        if missing:
            raise ValueError(f"{where}: intrinsics {missing} missing (top level or per frame)")
        if not _same_aspect((cam["h"], cam["w"]), sizes[folder]):
            raise ValueError(f"{where}: transforms.json says {cam['h']}x{cam['w']}, but {folder}/ holds "
                             f"{sizes[folder][0]}x{sizes[folder][1]} images: aspect ratios differ")
        sx, sy = W / cam["w"], H / cam["h"]  # exact with pixel centres at +0.5; Assumption: zero skew (as nerfstudio)
        K.append([[cam["fl_x"] * sx, 0, cam["cx"] * sx], [0, cam["fl_y"] * sy, cam["cy"] * sy], [0, 0, 1]])
        m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        _check_pose(m, where)
        c2w.append(gl_to_cv(m))
        # Assumption: DL3DV images are distorted (OPENCV k1, k2, p1, p2) and depth maps are aligned with
        # them, so unproject/project undistort/distort exactly; a pinhole scene has zeros here.
        dist.append([cam[key] or 0.0 for key in DIST_KEYS])
        images.append(path / folder / names[k])
        if not images[-1].is_file():
            raise FileNotFoundError(f"{images[-1]}: missing image (listed in {tf})")
        # Assumption: COLMAP depth comes from a dense workspace of these very images (same K, no crop).
        candidates = [path / "depths" / f"{Path(names[k]).stem}.npy",
                      path / "dense" / "stereo" / "depth_maps" / f"{names[k]}.geometric.bin"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            no_depth.append(candidates)
            continue
        depths.append(found[0])
        if not _same_aspect(read_depth(found[0], header_only=True), sizes[folder]):
            raise ValueError(f"{found[0]}: depth is {read_depth(found[0], True)}, images are {sizes[folder]} "
                             f"(H, W): aspect ratios differ, so depth cannot be aligned to the image")
    if no_depth:
        raise FileNotFoundError(f"{path}: no depth for {len(no_depth)} of {len(frames)} frames, e.g. "
                                f"{no_depth[0][0]} or {no_depth[0][1]}; DL3DV ships no depth: write float32 "
                                f"z-depth maps as depths/<image stem>.npy")
    return Scene(str(path), np.array(K), np.stack(c2w), (H, W), np.array(index)[order].astype(np.int64),
                 images, depths, np.array(dist, dtype=np.float64), sizes[folder])


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


def query_grid(size, grids=(8, 24)):
    """Cell centres ((c + 0.5)·W/g, (r + 0.5)·H/g) of g x g grids over an H x W image, in order of `grids`,
    row-major within a grid. -> (N, 2) px, N = Σ g²."""
    H, W = size
    points = []
    for g in grids:
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
        if a + F > n:
            raise ValueError(f"{name}: {F} consecutive frames from position {a} run past its {n} frames")
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


def make_sample(scene, rng, num_frames, size=None, grids=(8, 24), window=48, anchor=None,
                contiguous=False, margin=MARGIN):
    """One training sample, the DESIGN.md contract: frames (F, H, W, 3) uint8, depth (F, H, W) float32,
    K (F, 3, 3), c2w (F, 4, 4) float32, frame_index (F,) int64, tracks (F, N, 2), track_depth (F, N)
    float32, visible (F, N) bool; plus anchor (position of the anchor frame) and scene (path).
    Frames in temporal order; query points on the anchor frame's grids; size=None keeps scene.size.
    Assumption: frames are resized to `size`, not cropped (K scaled per axis), as the paper gives no crop."""
    ids, a = choose_frames(scene.frame_index, rng, num_frames, window, anchor, contiguous, scene.path)
    H, W = size = tuple(size or scene.size)
    frames = np.stack([resize_image(scene.image(i), size) for i in ids])  # (F, H, W, 3)
    depth = np.stack([resize_nearest(scene.depth(i), size) for i in ids])  # (F, H, W)
    K = scene.K[ids] * np.array([[W / scene.size[1]], [H / scene.size[0]], [1.0]])  # diag(sx, sy, 1) · K
    c2w = scene.c2w[ids]
    tracks, track_depth, visible = track(query_grid(size, grids), a, depth, K, c2w, margin, dist=scene.dist[ids])
    return dict(frames=frames, depth=depth, K=K.astype(np.float32), c2w=c2w.astype(np.float32),
                frame_index=scene.frame_index[ids], tracks=tracks, track_depth=track_depth,
                visible=visible, anchor=a, scene=scene.path)


class SceneDataset(torch.utils.data.Dataset):
    """Samples from every scene folder (one holding transforms.json) under `root`, searched recursively.
    Item i is a pure function of (seed, i): scene i mod #scenes, F ~ U{num_frames}, frames and anchor.
    Items have different F, so batch them with batch_size=None or a list-returning collate_fn."""

    def __init__(self, root, size=(336, 336), num_frames=(8, 24), grids=(8, 24), window=48, seed=0,
                 length=None, contiguous=False, preload=False):
        self.size, self.grids, self.window, self.seed, self.contiguous = tuple(size), grids, window, seed, contiguous
        self.num_frames = (num_frames, num_frames) if isinstance(num_frames, int) else tuple(num_frames)
        dirs = sorted({p.parent for p in Path(root).rglob("transforms.json")})
        self.scenes = []
        for d in dirs:
            try:
                scene = load_scene(d, self.size)
                choose_frames(scene.frame_index, np.random.default_rng(0), self.num_frames[1], window,
                              contiguous=contiguous, name=str(d))  # raises if too few frames
                self.scenes.append(scene.preload() if preload else scene)
            except (OSError, ValueError) as e:
                print(f"warning: skipping scene {d}: {e}", file=sys.stderr)
        if len(self.scenes) < len(dirs):
            print(f"warning: skipped {len(dirs) - len(self.scenes)} of {len(dirs)} scenes under {root}",
                  file=sys.stderr)
        if not self.scenes:
            raise FileNotFoundError(f"{root}: no usable scene (a folder with transforms.json, images*/ and "
                                    f"depth); write synthetic ones with `python data.py synth --out {root}`")
        self.length = length or 100 * len(self.scenes)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        F = int(rng.integers(self.num_frames[0], self.num_frames[1] + 1))
        return make_sample(self.scenes[i % len(self.scenes)], rng, F, self.size, self.grids, self.window,
                           contiguous=self.contiguous)


# ----------------------------------------------------------------------------- synthetic scenes

TEXELS_PER_M = 64.0
SYNTH_VERSION = 2  # bump when the renderer changes, so stale scenes are re-rendered


def _texture(rng, h, w):
    """A locally distinctive texture (h, w, 3) in [0, 1]: colour noise at three scales through a random
    per-surface colour mix, plus high-contrast discs and bars."""
    t = np.zeros((h, w, 3), np.float32)
    # Assumption: most energy at 2-6 tokens (about 60-200 px at 448 px), little below: finer noise
    # decorrelates under a few pixels of motion and no grid-aligned token could match it.
    for cell, weight in ((64, 1.0), (20, 0.5), (6, 0.1)):
        small = (rng.random((h // cell + 2, w // cell + 2, 3)) * 255).astype(np.uint8)
        t += weight * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) / 255
    t = (t - t.mean((0, 1))) / (t.std((0, 1)) + EPS)
    t = np.clip(0.5 + 0.25 * t @ rng.normal(size=(3, 3)) + 0.15 * rng.normal(size=3), 0, 1).astype(np.float32)
    for _ in range(h * w // 2000 + 2):  # ~one shape per 45 x 45 texels
        y, x, r = rng.random() * h, rng.random() * w, rng.uniform(6, 16)
        y0, y1, x0, x1 = int(max(y - r, 0)), int(min(y + r + 1, h)), int(max(x - r, 0)), int(min(x + r + 1, w))
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        shape = ((yy - y) ** 2 + (xx - x) ** 2 < r * r) if rng.random() < 0.7 else (abs(yy - y) < r / 4)
        t[y0:y1, x0:x1][shape] = rng.random(3) ** 2 if rng.random() < 0.5 else 1 - rng.random(3) ** 2
    return t


def _face_axes(face):
    return [a for a in range(3) if a != face // 2]


def _rot_z(yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _synth_layout(rng):
    """A room (world z up, floor at z = 0) and boxes standing on the floor: (centre, half, yaw, id) each.
    Inner boxes lie within 1.5 m of the centre, outer ones beyond 2.8 m; the camera orbits at 2.4-2.7 m.
    Two look-alike boxes (same size and textures) sit at clearly different depths in the first view."""
    L = rng.uniform(4.5, 5.5, 2)
    room = (np.array([0, 0, 1.5]), np.array([L[0], L[1], 1.5]) * [1, 1, rng.uniform(0.95, 1.15)], 0.0, 0)
    boxes, theta0 = [room], rng.uniform(0, 2 * np.pi)

    def place(radius, angle, half, tex):
        centre = np.array([radius * np.cos(angle), radius * np.sin(angle), half[2]])
        boxes.append((centre, half, rng.uniform(0, np.pi / 2), tex))
    twin, offset = rng.uniform([0.3, 0.3, 0.3], [0.45, 0.45, 0.6]), rng.choice([-1, 1]) * rng.uniform(0.25, 0.4)
    place(rng.uniform(0.5, 0.8), theta0 + offset, twin, 1)  # ~2 m from the first camera, on one side
    place(rng.uniform(3.5, min(L) - 0.8), theta0 + np.pi + offset, twin, 1)  # ~6 m, on the other side
    for k in range(5):
        place(rng.uniform(0, 0.9) if k < 3 else rng.uniform(3.5, min(L) - 0.8), rng.uniform(0, 2 * np.pi),
              rng.uniform([0.15, 0.15, 0.15], [0.4, 0.4, 0.8]) * (1 if k < 3 else 1.25), k + 2)
    return boxes, theta0


def _camera_path(rng, n, theta0):
    """Smooth orbit (radius 2.4-2.7 m, 0.5-0.8°/frame) looking at a slowly wandering point near the room
    centre, with a little bob and roll. -> c2w (n, 4, 4) OpenCV."""
    k = np.arange(n)
    theta = theta0 + np.radians(rng.uniform(0.5, 0.8) * rng.choice([-1, 1])) * k
    ph = rng.uniform(0, 2 * np.pi, 4)
    radius = rng.uniform(2.4, 2.7)
    eye = np.stack([radius * np.cos(theta), radius * np.sin(theta), 1.5 + 0.1 * np.sin(k / 9 + ph[0])], -1)
    target = np.stack([0.7 * np.cos(k / 40 + ph[1]), 0.7 * np.sin(k / 40 + ph[1]), 0.8 + 0.2 * np.sin(k / 25 + ph[2])], -1)
    fwd = (target - eye) / np.linalg.norm(target - eye, axis=-1, keepdims=True)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    roll = 0.05 * np.sin(k / 15 + ph[3])[:, None]
    right, down = np.cos(roll) * right + np.sin(roll) * down, np.cos(roll) * down - np.sin(roll) * right
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = np.stack([right, down, fwd], -1), eye
    return c2w


def _render(boxes, textures, K, c2w, size):
    """Ray-cast one frame: RGB float32 (H, W, 3) and exact z-depth (H, W). Box 0 is the room, seen from inside.
    Ray p(t) = o + t·R K⁻¹[u, v, 1]ᵀ has camera z = t, so the hit parameter t is the z-depth."""
    H, W = size
    v, u = np.mgrid[:H, :W].reshape(2, -1).astype(np.float32) + 0.5
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)])  # (3, P)
    # (3, P) world ray directions, coordinates first; einsum, as BLAS threads slow this (3, 3) @ (3, P) down
    d = np.einsum("ij,jp->ip", c2w[:3, :3].astype(np.float32), rays)
    best, hit_box, hit_face = np.full(d.shape[1], np.inf, np.float32), np.zeros(d.shape[1], int), np.zeros(d.shape[1], int)
    for b, (centre, half, yaw, _) in enumerate(boxes):  # slab test in the box frame
        if b and (centre - c2w[:3, 3]) @ c2w[:3, 2] < -np.linalg.norm(half):
            continue  # wholly behind the camera
        R = _rot_z(yaw).astype(np.float32)
        o, db = R.T @ (c2w[:3, 3] - centre).astype(np.float32), np.einsum("ji,jp->ip", R, d)  # (3,), (3, P)
        h, o = half.astype(np.float32)[:, None], o[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-h - o) / db, (h - o) / db  # (3, P)
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        slab = far if b == 0 else near  # leave the room through its far slab, enter a box through its near one
        t = slab.min(0) if b == 0 else slab.max(0)  # (P,)
        axis = np.where(slab[0] == t, 0, np.where(slab[1] == t, 1, 2))
        side = np.where(axis == 0, db[0], np.where(axis == 1, db[1], db[2])) > 0  # face 2·axis + side
        hit = np.isfinite(t) if b == 0 else (t <= far.min(0)) & (t > EPS) & (t < best)
        best, hit_box = np.where(hit, t, best), np.where(hit, b, hit_box)
        hit_face = np.where(hit, 2 * axis + (side == (b == 0)), hit_face)
    rgb = np.zeros((d.shape[1], 3), np.float32)
    light = np.array([0.4, 0.3, 0.87])
    for b, (centre, half, yaw, tex_id) in enumerate(boxes):
        in_b = np.flatnonzero(hit_box == b)
        points = c2w[:3, 3, None] + best[in_b] * d[:, in_b]  # (3, P_b) world hit points
        local = np.einsum("ji,jp->ip", _rot_z(yaw), points - centre[:, None]) + half[:, None]  # (3, P_b) in [0, 2·half]
        for face in np.unique(hit_face[in_b]):
            sel, (s_ax, t_ax) = hit_face[in_b] == face, _face_axes(face)
            tex = textures[tex_id][face]
            s = np.clip(local[s_ax, sel] * TEXELS_PER_M - 0.5, 0, tex.shape[1] - 1.001)  # bilinear lookup
            t = np.clip(local[t_ax, sel] * TEXELS_PER_M - 0.5, 0, tex.shape[0] - 1.001)
            s0, t0 = s.astype(int), t.astype(int)
            fs, ft, i, w = (s - s0)[:, None], (t - t0)[:, None], t0 * tex.shape[1] + s0, tex.shape[1]
            flat = tex.reshape(-1, 3)
            colour = ((flat[i] * (1 - fs) + flat[i + 1] * fs) * (1 - ft)
                      + (flat[i + w] * (1 - fs) + flat[i + w + 1] * fs) * ft)
            normal = _rot_z(yaw)[:, face // 2] * (1 if face % 2 else -1)
            rgb[in_b[sel]] = colour * (0.75 + 0.25 * abs(normal @ light))
    return rgb.reshape(H, W, 3), best.reshape(H, W)


def synth_scene(out_dir, seed, num_frames=64, size=448):
    """Render one synthetic scene in DL3DV layout: images/ (size x size), images_2/ (half), depths/
    (float32 z-depth at full size), transforms.json (nerfstudio/OpenGL c2w, OPENCV with zero distortion).
    transforms.json is written last, so its presence marks a complete scene. Deterministic in seed.
    One core renders 24 frames at 448 px in ~4 s, 64 frames in ~11 s; a 64-frame scene takes ~85 MB."""
    rng = np.random.default_rng(seed)
    boxes, theta0 = _synth_layout(rng)
    textures = {}  # texture id -> six face textures; face 2·axis + side spans the two other axes (s, t)
    for centre, half, _, tex_id in boxes:
        if tex_id not in textures:
            textures[tex_id] = [_texture(rng, int(2 * half[t] * TEXELS_PER_M) + 2, int(2 * half[s] * TEXELS_PER_M) + 2)
                                for s, t in (_face_axes(face) for face in range(6))]
    c2w = _camera_path(rng, num_frames, theta0)
    f = size * rng.uniform(0.8, 1.0)
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    out = Path(out_dir)
    for sub in ("images", "images_2", "depths"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    frames = []
    for k in range(num_frames):
        rgb, depth = _render(boxes, textures, K, c2w[k], (size, size))
        name = f"frame_{k + 1:05d}"
        image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
        image.save(out / "images" / f"{name}.png", compress_level=1)
        image.resize((size // 2, size // 2), Image.BILINEAR).save(out / "images_2" / f"{name}.png", compress_level=1)
        np.save(out / "depths" / f"{name}.npy", depth.astype(np.float32))
        frames.append({"file_path": f"images/{name}.png", "transform_matrix": gl_to_cv(c2w[k]).tolist(),
                       "colmap_im_id": k + 1})
    meta = {"camera_model": "OPENCV", "w": size, "h": size, "fl_x": f, "fl_y": f, "cx": size / 2, "cy": size / 2,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames,
            "synthetic": {"version": SYNTH_VERSION, "seed": seed, "boxes": [dict(centre=c.tolist(), half=h.tolist(), yaw=y, texture=t)
                                                  for c, h, y, t in boxes[1:]]}}
    (out / "transforms.json.tmp").write_text(json.dumps(meta, indent=1))
    (out / "transforms.json.tmp").replace(out / "transforms.json")
    return out


def make_synthetic(root, n_scenes, seed=0, num_frames=64, size=448):
    """Write scenes root/scene_0000 ... with seeds seed, seed + 1, ...; complete matching scenes are kept."""
    root = Path(root)
    for k in tqdm(range(n_scenes), desc=f"synthetic scenes in {root}"):
        out, tf = root / f"scene_{k:04d}", root / f"scene_{k:04d}" / "transforms.json"
        if tf.is_file():
            meta = json.loads(tf.read_text())
            if (meta["w"], len(meta["frames"]), meta["synthetic"]["seed"], meta["synthetic"].get("version")) == \
                    (size, num_frames, seed + k, SYNTH_VERSION):
                continue
        synth_scene(out, seed + k, num_frames, size)
    return root


def ensure_synthetic(root="data/synthetic", n_train=6, n_val=2, size=448, frames=48):
    """The project's default data: root/train (seeds 0...) and root/val (seeds 10000...), made if absent."""
    root = Path(root)
    return (make_synthetic(root / "train", n_train, 0, frames, size),
            make_synthetic(root / "val", n_val, 10_000, frames, size))


# ----------------------------------------------------------------------------- instruction data (L_LM stream)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def read_clip(path, num_frames):
    """num_frames frames at np.linspace(0, n-1, num_frames, dtype=int) of a video file or a folder of
    images (natural sort: frame_2 before frame_10) -> list of (H, W, 3) uint8. Video files need PyAV
    (optional dependency: pip install av); only the frames up to the last one asked for are decoded."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                       key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
        if not files:
            raise FileNotFoundError(f"{path}: frame folder holds no .jpg/.png images")
        return [np.asarray(Image.open(files[i]).convert("RGB"))
                for i in np.linspace(0, len(files) - 1, num_frames, dtype=int)]
    try:
        import av
    except ImportError:
        raise ImportError(f"decoding {path} needs the optional package av: pip install av "
                          f"(or extract its frames into a folder of images)") from None
    with av.open(str(path)) as c:
        total = c.streams.video[0].frames or sum(p.size > 0 for p in c.demux(video=0))
    idx = np.linspace(0, total - 1, num_frames, dtype=int).tolist()
    got = {}
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in idx:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= idx[-1]:
                break
    if len(got) < len(set(idx)):
        raise ValueError(f"{path}: the header says {total} frames but fewer decode; re-encode the video")
    return [got[i] for i in idx]


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
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]

    def __getitem__(self, i):
        it = self.items[i]
        prompt = re.sub(r"<(image|video)>\n?", "", it["conversations"][0]["value"]).strip()
        return self.frames(it.get("video") or it.get("image")), prompt, it["conversations"][1]["value"]


# ----------------------------------------------------------------------------- figure and command line

def _colourise(depth):
    """Depth (H, W) -> uint8 (H, W, 3): inverse depth, 2-98 percentile stretched, dark far to bright near; 0 -> black."""
    valid = depth > 0
    inv = np.where(valid, 1 / np.where(valid, depth, 1), 0)
    lo, hi = np.percentile(inv[valid], [2, 98]) if valid.any() else (0, 1)
    x = np.clip((inv - lo) / (hi - lo + EPS), 0, 1)
    stops = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)
    rgb = np.stack([np.interp(x, np.linspace(0, 1, 5), stops[:, c]) for c in range(3)], -1)
    return np.where(valid[..., None], rgb, 0).astype(np.uint8)




def show(scene_dir, out, num_frames=4, stride=12, grid=8, size=336, anchor=0):
    """The paper's training-data figure: top row frames with the anchor frame's tracks as dots (one colour per
    query point, drawn where visible), bottom row depth maps. Frames are `stride` apart from the anchor."""
    scene = load_scene(scene_dir, (size, size))
    span = 1 + stride * (num_frames - 1)
    s = make_sample(scene, np.random.default_rng(0), span, (size, size), grids=(grid,), anchor=anchor, contiguous=True)
    hue = (np.arange(grid * grid) * 0.618034) % 1  # golden-ratio hues: neighbouring points differ
    colours = (255 * np.clip(np.abs(((hue[:, None] * 6 + [0, 4, 2]) % 6) - 3) - 1, 0, 1)).astype(int)  # HSV, S = V = 1
    pad, top = 8, 22
    canvas = Image.new("RGB", (num_frames * (size + pad) + pad, 2 * (size + pad) + top), "white")
    draw = ImageDraw.Draw(canvas)
    for col, f in enumerate(range(0, span, stride)):
        x = pad + col * (size + pad)
        frame = Image.fromarray(s["frames"][f])
        dots = ImageDraw.Draw(frame)
        for (u, v), colour in zip(s["tracks"][f][s["visible"][f]], colours[s["visible"][f]]):
            dots.ellipse([u - 4.5, v - 4.5, u + 4.5, v + 4.5], fill=tuple(colour), outline="black", width=2)
        canvas.paste(frame, (x, top))
        canvas.paste(Image.fromarray(_colourise(s["depth"][f])), (x, top + size + pad))
        label = f"frame {s['frame_index'][f]}" + (" (anchor)" if f == s["anchor"] else f"  +{f}")
        draw.text((x, 5), label + f"  {s['visible'][f].sum()}/{grid * grid} visible", fill="black")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="DL3DV-format data for GASP: synthetic scenes and the tracks figure.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("synth", help="write synthetic scenes in DL3DV layout",
                       description="Render textured rooms (images/, images_2/, depths/, transforms.json).")
    a.add_argument("--out", required=True, help="folder to write scene_0000, scene_0001, ... into")
    a.add_argument("--scenes", type=int, default=8, help="number of scenes")
    a.add_argument("--frames", type=int, default=64, help="frames per scene")
    a.add_argument("--size", type=int, default=448, help="image height = width in pixels (images_2/ is half)")
    a.add_argument("--seed", type=int, default=0, help="seed of the first scene (scene k uses seed + k)")
    b = sub.add_parser("show", help="draw frames with tracks (top) and depth (bottom) for one scene",
                       description="Draw the paper's training-data figure for one scene folder.")
    b.add_argument("--scene", required=True, help="scene folder (holds transforms.json)")
    b.add_argument("--out", default="tracks.png", help="output PNG")
    b.add_argument("--frames", type=int, default=4, help="number of frames (columns)")
    b.add_argument("--stride", type=int, default=12, help="frame gap between columns")
    b.add_argument("--grid", type=int, default=8, help="query points on a grid x grid grid of the anchor frame")
    b.add_argument("--size", type=int, default=336, help="frame size in pixels")
    b.add_argument("--anchor", type=int, default=0, help="position of the anchor frame (first column)")
    args = p.parse_args(argv)
    if args.command == "synth":
        make_synthetic(args.out, args.scenes, args.seed, args.frames, args.size)
    else:
        print(f"wrote {show(args.scene, args.out, args.frames, args.stride, args.grid, args.size, args.anchor)}")


if __name__ == "__main__":
    main()
