"""DL3DV's scene layout and camera convention: the one writer every scene generator and test builder uses,
and the convention the reader (data.py) shares.

A scene folder holds `transforms.json` (nerfstudio schema: intrinsics, frames[].file_path, OpenGL camera-to-world
`transform_matrix`), `images*/` and, for the depth track source, `depths/<image stem>.npy`; DL3DV's SfM model
sits in `colmap/sparse/0/` (cameras.bin, images.bin, points3D.bin, written by scenes/colmap.py).
transforms.json is written last, through a .tmp file renamed into place, so its presence marks a complete scene.

  write_scene        a rendered scene: images/, images_2/ (half size), depths/, transforms.json
  write_frame        one frame's image (and half-size copy, and depth) under a chosen images folder
  transforms         the nerfstudio transforms.json content from K, OpenGL poses and file names
  write_transforms   transforms.json, last, via the .tmp rename
  write_sparse_model a COLMAP sparse model from one camera, poses and keypoints observing 3D points
  make_scenes        scenes root/scene_0000 ... of a generator, stale or missing ones rendered in a thread pool

Convention: nerfstudio/OpenGL cameras look down -z with y up; the code uses OpenCV (x right, y down, z forward).
c2w_cv = c2w_gl · diag(1, -1, -1, 1); the same product converts back.
References: DL3DV-10K (github.com/DL3DV-10K/Dataset); nerfstudio data conventions
(docs.nerf.studio/quickstart/data_conventions.html).
"""
import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from scenes.colmap import colmap_w2c, write_cameras_bin, write_images_bin, write_points3d_bin

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # c2w_cv = c2w_gl @ GL_TO_CV (flips camera y, z); its own inverse
DIST_KEYS = ("k1", "k2", "p1", "p2")  # transforms.json's OPENCV distortion


def gl_to_cv(c2w):
    """nerfstudio/OpenGL camera (y up, z back) <-> OpenCV (y down, z forward): c2w (..., 4, 4) @ diag(1,-1,-1,1)."""
    return c2w @ GL_TO_CV


def frame_name(k):
    """DL3DV's file name of frame position k (from 0): frame_00001.png, frame_00002.png, ..."""
    return f"frame_{k + 1:05d}.png"


def write_frame(out, name, rgb, depth=None, folder="images", half_size=False, compress_level=6):
    """One frame of a scene folder `out`: rgb uint8 (H, W, 3) -> out/folder/name (PNG at zlib level
    compress_level; 6 is PIL's default); with half_size, out/images_2/name at (H // 2, W // 2), bilinear;
    depth (H, W) float z-depth -> out/depths/<stem of name>.npy, stored as given."""
    out = Path(out)
    image = Image.fromarray(rgb)
    (out / folder).mkdir(parents=True, exist_ok=True)
    image.save(out / folder / name, compress_level=compress_level)
    if half_size:
        (out / "images_2").mkdir(exist_ok=True)
        image.resize((rgb.shape[1] // 2, rgb.shape[0] // 2), Image.BILINEAR).save(
            out / "images_2" / name, compress_level=compress_level)
    if depth is not None:
        (out / "depths").mkdir(exist_ok=True)
        np.save(out / "depths" / f"{Path(name).stem}.npy", depth)


def transforms(K, size, files, c2w_gl, dist=None, image_ids=None):
    """transforms.json's content (nerfstudio): one camera K (3, 3) for an image of size (H, W), frames
    `files` (paths relative to the scene, e.g. images/frame_00001.png) with OpenGL camera-to-world poses
    c2w_gl (F, 4, 4). dist (k1, k2, p1, p2): camera_model OPENCV with those values as given; None: PINHOLE,
    no distortion keys. image_ids (F,): each frame's colmap_im_id, as DL3DV's files carry."""
    frames = [{"file_path": f, "transform_matrix": np.asarray(m).tolist()} for f, m in zip(files, c2w_gl)]
    if image_ids is not None:
        for fr, i in zip(frames, image_ids):
            fr["colmap_im_id"] = i
    meta = {"camera_model": "PINHOLE" if dist is None else "OPENCV", "w": size[1], "h": size[0],
            "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}
    return {**meta, **({} if dist is None else dict(zip(DIST_KEYS, dist))), "frames": frames}


def write_transforms(out, meta, indent=None):
    """out/transforms.json from meta, through out/transforms.json.tmp renamed into place: written after every
    other file, its presence marks a complete scene."""
    tmp = Path(out) / "transforms.json.tmp"
    tmp.write_text(json.dumps(meta, indent=indent))
    tmp.replace(Path(out) / "transforms.json")


def write_scene(out, frames, K, c2w_cv, size, extra=None):
    """A rendered scene in DL3DV layout plus exact depth: for each (rgb uint8 (H, W, 3), depth float32 (H, W))
    of the iterable `frames` (consumed one at a time, so a generator keeps one frame in memory), images/ and
    images_2/ (half size) frame_00001.png ... (zlib level 1, the fastest: generators write thousands of frames
    and the files are temporary data, not archives) and depths/frame_00001.npy ...; then transforms.json:
    one OPENCV camera K (3, 3) at size (H, W) with zero distortion, poses c2w_cv (F, 4, 4) OpenCV stored as
    OpenGL, colmap_im_id 1..F, and the generator's own record under extra {key: value}. -> out as a Path."""
    out, files = Path(out), []
    for k, (rgb, depth) in enumerate(frames):
        write_frame(out, frame_name(k), rgb, depth, half_size=True, compress_level=1)
        files.append(f"images/{frame_name(k)}")
    meta = transforms(K, size, files, [gl_to_cv(m) for m in c2w_cv], (0.0, 0.0, 0.0, 0.0), range(1, len(files) + 1))
    write_transforms(out, {**meta, **(extra or {})}, indent=1)
    return out


def write_sparse_model(folder, camera, names, c2w_cv, image_ids, keypoints, point_ids, points, colour):
    """A COLMAP sparse model (cameras.bin, images.bin, points3D.bin) in `folder`: one camera (model name,
    width, height, params) shared by every image; image image_ids[f] named names[f] at pose c2w_cv[f]
    (OpenCV camera-to-world), with keypoints[f] (n_f, 2) px at the camera's size observing point_ids[f] (n_f,)
    (-1: no 3D point). points {point id: xyz (3,)}; a point's track lists (image id, keypoint index) in frame
    order, and only observed points are written, in ascending id, with one rgb `colour` and error 0.5."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, tracks = {}, {}
    for f, (name, m, iid) in enumerate(zip(names, c2w_cv, image_ids)):
        images[int(iid)] = (*colmap_w2c(m), 1, name, keypoints[f], point_ids[f])
        for j, p in enumerate(point_ids[f]):
            if p >= 0:
                tracks.setdefault(int(p), []).append((int(iid), j))
    write_cameras_bin(folder / "cameras.bin", {1: camera})
    write_images_bin(folder / "images.bin", images)
    write_points3d_bin(folder / "points3D.bin", {p: (points[p], colour, 0.5, tracks[p]) for p in sorted(tracks)})


def render_scenes(render, jobs, desc):
    """Call render(*job) for every job, in one thread per CPU core: scenes are independent and each is
    deterministic in its seed, so the files do not depend on how the jobs are spread. numpy and PNG encoding
    release the GIL for most of a render, and threads, unlike spawned processes, never re-run a caller's
    unguarded script. A failure in any scene is raised here."""
    with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1) or 1) as pool:
        for done in tqdm(as_completed([pool.submit(render, *job) for job in jobs]), total=len(jobs), desc=desc):
            done.result()


def make_scenes(root, render, n_scenes, seed, num_frames, size, stamp, version, desc):
    """Scenes root/scene_0000 ... by render(out, seed + k, num_frames, size). A complete scene (transforms.json
    present) is kept when its size, frame count and meta[stamp]'s seed and version match; the others are
    (re)rendered in a thread pool (`render_scenes`). -> root as a Path."""
    root, jobs = Path(root), []
    for k in range(n_scenes):
        out = root / f"scene_{k:04d}"
        if (out / "transforms.json").is_file():
            meta = json.loads((out / "transforms.json").read_text())
            info = meta.get(stamp, {})
            if (meta.get("w"), len(meta.get("frames", [])), info.get("seed"), info.get("version")) == \
                    (size, num_frames, seed + k, version):
                continue
        jobs.append((out, seed + k, num_frames, size))
    render_scenes(render, jobs, desc)
    return root


def generator_main(argv, description: str, make, scenes: int, frames: int, seed: int):
    """A generator's command line: --out, --scenes, --frames, --size, --seed -> make(out, scenes, seed, frames,
    size), the signature of synth.make_synthetic and rooms.make_rooms."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="folder to write scene_0000, scene_0001, ... into")
    p.add_argument("--scenes", type=int, default=scenes, help="number of scenes")
    p.add_argument("--frames", type=int, default=frames, help="frames per scene")
    p.add_argument("--size", type=int, default=448, help="image height = width in pixels (images_2/ is half)")
    p.add_argument("--seed", type=int, default=seed, help="seed of the first scene (scene k uses seed + k)")
    args = p.parse_args(argv)
    for flag in ("scenes", "frames", "size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.size < 2:
        p.error(f"--size must be at least 2 (images_2/ holds half-size frames), got {args.size}")
    make(args.out, args.scenes, args.seed, args.frames, args.size)
