"""Synthetic scenes in DL3DV layout: textured rooms with boxes, smooth camera paths and exact depth.

The project's default data (no download): each scene is written as DL3DV ships it plus exact depth
(`images/`, `images_2/`, `depths/<stem>.npy`, nerfstudio `transforms.json`) and is read back through the
same `data.load_scene` as real scenes. Rooms hold look-alike boxes at clearly different depths, which is
what the depth loss (G5) separates. Deterministic in the seed: same seed -> same bytes.

Run (CPU only):
  python synth.py --out data/synthetic/train --scenes 8      # ~11 s per 64-frame 448 px scene

References:
  DL3DV-10K layout: https://github.com/DL3DV-10K/Dataset
  nerfstudio conventions: https://docs.nerf.studio/quickstart/data_conventions.html
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data import EPS, gl_to_cv

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


def main(argv=None):
    p = argparse.ArgumentParser(description="Render synthetic scenes in DL3DV layout "
                                            "(images/, images_2/, depths/, transforms.json).")
    p.add_argument("--out", required=True, help="folder to write scene_0000, scene_0001, ... into")
    p.add_argument("--scenes", type=int, default=8, help="number of scenes")
    p.add_argument("--frames", type=int, default=64, help="frames per scene")
    p.add_argument("--size", type=int, default=448, help="image height = width in pixels (images_2/ is half)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scene (scene k uses seed + k)")
    args = p.parse_args(argv)
    for flag in ("scenes", "frames", "size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be positive, got {getattr(args, flag)}")
    make_synthetic(args.out, args.scenes, args.seed, args.frames, args.size)


if __name__ == "__main__":
    main()
