"""Synthetic scenes in DL3DV layout: textured rooms with boxes, cylinders and spheres, varied camera paths,
changing light and exact depth.

The project's default data (no download): each scene is written as DL3DV ships it plus exact depth (`images/`,
`images_2/`, `depths/<stem>.npy`, nerfstudio `transforms.json`; scenes/layout.py's writer) and is read back
through the same `data.load_scene` as real scenes. Rooms hold look-alike boxes at clearly different depths,
which is what the depth loss (G5) separates. So that what a model learns from them is geometry rather than one
kind of picture, scenes vary: each surface draws one of four texture families (smooth colour noise, stripes,
checkers/tiles, photo-like patches), objects are boxes, vertical cylinders and spheres (all ray-cast
analytically, so depth is exact), the camera orbits, arcs with a changing radius or dollies along a line, and
exposure, tone curve, colour cast and light direction drift between frames. Deterministic in the seed: same seed
-> same bytes.

Run (CPU only):
  python -m scenes.synth --out data/synthetic/train --scenes 8

References:
  DL3DV-10K layout: https://github.com/DL3DV-10K/Dataset
  nerfstudio conventions: https://docs.nerf.studio/quickstart/data_conventions.html
"""
from pathlib import Path

import numpy as np
from PIL import Image

from scenes.layout import generator_main, make_scenes, write_scene

EPS = 1e-6  # m; smallest accepted ray parameter and depth

TEXELS_PER_M = 64.0
SYNTH_VERSION = 3  # bump when the renderer changes, so stale scenes are re-rendered
CLEARANCE = 0.6  # metres kept between the camera and any object's bounding circle or the room's walls
PATHS = ("orbit", "arc", "dolly")  # camera path kinds; scene seed s moves along PATHS[s % 3]


def _noise(rng, h, w, cell, channels=3):
    """Smooth noise (h, w, channels) in [0, 1]: uniform values on a grid of `cell` texels, bicubic upsampled."""
    small = (rng.random((h // cell + 2, w // cell + 2, channels)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small.squeeze(-1) if channels == 1 else small).resize((w, h), Image.BICUBIC),
                      np.float32).reshape(h, w, channels) / 255


def _standardise(t):
    return (t - t.mean((0, 1))) / (t.std((0, 1)) + EPS)


def _texture(rng, h, w, family):
    """A locally distinctive texture (h, w, 3) in [0, 1] from one of four families, drawn per surface:
    0 smooth colour noise, 1 stripes, 2 checkers/tiles, 3 procedural "photo-like" patches; then discs and bars.
    Periodic families (1, 2) are modulated by smooth colour noise (and carry discs and bars), so a patch of a
    few tokens does not look like the one a period away."""
    # Demo choice: most energy at 2-6 tokens (about 60-200 px at 448 px, 1 token = 28 px; 1 m is ~160 px at
    # 2.5 m, so ~25-75 texels), little below: finer structure decorrelates under a few pixels of motion and
    # no grid-aligned token could match it.
    yy, xx = np.mgrid[:h, :w].astype(np.float32) + 0.5
    colour_noise = _standardise(_noise(rng, h, w, 64)) @ rng.normal(size=(3, 3)).astype(np.float32)  # (h, w, 3)
    if family == 0:  # smooth colour noise at three scales through a random colour mix
        t = sum(wt * _noise(rng, h, w, cell) for cell, wt in ((64, 1.0), (20, 0.5), (6, 0.1)))
        t = 0.5 + 0.25 * _standardise(t) @ rng.normal(size=(3, 3)).astype(np.float32) + 0.15 * rng.normal(size=3)
    elif family == 1:  # a grating at random orientation, period (12-40 texels) and sharpness, two colours
        a, period = rng.uniform(0, np.pi), rng.uniform(12, 40)
        wave = 0.5 + 0.5 * np.tanh(rng.uniform(1, 6) * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period))
        c0, c1 = rng.random(3), rng.random(3)
        t = c0 + wave[..., None] * (c1 - c0) + 0.12 * colour_noise
    elif family == 2:  # checkers (two alternating colours) or tiles (one of four per tile), brick offset, grout
        sx, sy = rng.uniform(16, 40, 2)
        row = np.floor(yy / sy)
        u = xx / sx + (0.5 * row if rng.random() < 0.5 else 0)
        col = np.floor(u)
        r, c = row.astype(int), col.astype(int)
        if rng.random() < 0.5:
            tile = rng.random((2, 3))[(r + c) % 2]
        else:
            tile = rng.random((4, 3))[rng.integers(0, 4, (r.max() + 1, c.max() + 2))[r, c]]
        tile = tile + rng.normal(0, 0.06, (r.max() + 1, c.max() + 2, 3))[r, c]  # per-tile jitter
        fx, fy = u - col, yy / sy - row
        grout = (np.minimum(fx, 1 - fx) * sx < 1.2) | (np.minimum(fy, 1 - fy) * sy < 1.2)
        t = np.where(grout[..., None] & (rng.random() < 0.6), 0.3 * tile, tile) + 0.1 * colour_noise
    else:  # photo-like: regions with hard edges, shaded by octave noise, a gradient and soft blobs
        field = sum(wt * _noise(rng, h, w, cell, 1) for cell, wt in ((128, 1.0), (48, 0.6), (16, 0.3), (6, 0.1)))
        level = _noise(rng, h, w, 48, 1)[..., 0]
        region = np.searchsorted(np.quantile(level, [0.25, 0.5, 0.75]), level)  # four regions, hard edges
        g = rng.normal(size=2)
        ramp = ((xx - w / 2) * g[0] + (yy - h / 2) * g[1]) / (w + h)
        t = rng.random((4, 3))[region] * (0.6 + 0.2 * _standardise(field) + ramp[..., None]) + 0.08 * colour_noise
        for _ in range(h * w // 3000 + 1):  # soft blobs, 8-30 texels
            y, x, r, c = rng.random() * h, rng.random() * w, rng.uniform(8, 30), rng.random(3)
            y0, y1 = int(max(y - 2 * r, 0)), int(min(y + 2 * r + 1, h))
            x0, x1 = int(max(x - 2 * r, 0)), int(min(x + 2 * r + 1, w))
            a = np.exp(-((yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2) / (2 * (r / 2) ** 2))[..., None]
            t[y0:y1, x0:x1] = (1 - 0.8 * a) * t[y0:y1, x0:x1] + 0.8 * a * c
    t = np.clip(t, 0, 1).astype(np.float32)
    for _ in range(h * w // (2000 if family == 0 else 4000) + 2):  # ~one shape per 45-65 texels square
        y, x, r = rng.random() * h, rng.random() * w, rng.uniform(6, 16)
        y0, y1, x0, x1 = int(max(y - r, 0)), int(min(y + r + 1, h)), int(max(x - r, 0)), int(min(x + r + 1, w))
        yy_, xx_ = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        shape = ((yy_ - y) ** 2 + (xx_ - x) ** 2 < r * r) if rng.random() < 0.7 else (abs(yy_ - y) < r / 4)
        t[y0:y1, x0:x1][shape] = rng.random(3) ** 2 if rng.random() < 0.5 else 1 - rng.random(3) ** 2
    return t


def _rot_z(yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# An object is (kind, centre (3,), half (3,), yaw, texture id), standing on the floor (centre z = half z):
#   "room" / "box": a box of half extents `half` turned by yaw about z (the room is seen from inside);
#   "cylinder": vertical, radius half[0], height 2·half[2]; "sphere": radius half[0] (= half[1] = half[2]).
# Faces, each with its own texture: box 2·axis + side (spanning the two other axes); cylinder 0 side, 1 top;
# sphere 0. _face_sizes gives each face's texture extent in metres (s, t).
def _face_sizes(kind, half):
    if kind in ("room", "box"):
        return [2 * half[[a for a in range(3) if a != face // 2]] for face in range(6)]
    r = half[0]
    if kind == "cylinder":
        return [np.array([2 * np.pi * r, 2 * half[2]]), 2 * half[:2]]
    return [np.array([2 * np.pi * r, np.pi * r])]


def _synth_layout(rng):
    """A room (world z up, floor at z = 0) and objects on the floor: boxes, vertical cylinders and spheres.
    Inner objects lie within 1.5 m of the centre, outer ones beyond 2.9 m; the camera moves at 2-2.9 m
    (see _scene_geometry, which keeps it clear of both).
    Two look-alike boxes (same size and textures) sit at clearly different depths from the first camera."""
    L = rng.uniform(4.5, 5.5, 2)
    half = np.array([L[0], L[1], 1.5 * rng.uniform(0.95, 1.15)])
    room = ("room", half * [0, 0, 1], half, 0.0, 0)
    objects, theta0 = [room], rng.uniform(0, 2 * np.pi)

    def place(kind, radius, angle, half, tex):
        centre = np.array([radius * np.cos(angle), radius * np.sin(angle), half[2]])
        objects.append((kind, centre, half, rng.uniform(0, 2 * np.pi), tex))
    twin, offset = rng.uniform([0.3, 0.3, 0.3], [0.45, 0.45, 0.6]), rng.choice([-1, 1]) * rng.uniform(0.25, 0.4)
    place("box", rng.uniform(0.5, 0.8), theta0 + offset, twin, 1)  # ~2 m from the first camera, on one side
    place("box", rng.uniform(3.6, min(L) - 0.8), theta0 + np.pi + offset, twin, 1)  # ~6 m, on the other side
    for k in range(6):
        outer = k >= 3
        kind = rng.choice(["box", "cylinder", "sphere"], p=[0.4, 0.35, 0.25])
        if kind == "box":
            half = rng.uniform([0.15, 0.15, 0.15], [0.4, 0.4, 0.8])
        elif kind == "cylinder":  # from a squat drum to a pillar
            half = np.array([1, 1, 0]) * rng.uniform(0.12, 0.35) + [0, 0, rng.uniform(0.15, 0.9)]
        else:
            half = np.full(3, rng.uniform(0.15, 0.4))
        place(str(kind), rng.uniform(3.6, min(L) - 0.8) if outer else rng.uniform(0, 0.9), rng.uniform(0, 2 * np.pi),
              half * (1.25 if outer else 1), k + 2)
    return objects, theta0


def _camera_path(rng, n, theta0, path):
    """A smooth camera path of kind `path` (one of PATHS), starting at angle theta0 about the room centre, moving
    ~2-4 cm per frame, with a little bob and roll -> c2w (n, 4, 4) OpenCV:
      "orbit": radius 2.4-2.7 m at 0.5-0.8°/frame, looking at a slowly wandering point near the room centre;
      "arc":   the same with a radius changing by 0.5-1.2 cm per frame;
      "dolly": a straight line (sideways, forward or oblique) at 2-3 cm/frame, looking in a slowly panning
               direction (turning under 0.35°/frame: mostly translation, so parallax does the work)."""
    k = np.arange(n)[:, None]
    ph = rng.uniform(0, 2 * np.pi, 6)
    height = rng.uniform(1.3, 1.7) + 0.1 * np.sin(k[:, 0] / 9 + ph[0])
    wander = np.stack([0.7 * np.cos(k[:, 0] / 40 + ph[1]), 0.7 * np.sin(k[:, 0] / 40 + ph[1]),
                       0.8 + 0.2 * np.sin(k[:, 0] / 25 + ph[2])], -1)  # (n, 3) a point near the room centre
    if path in ("orbit", "arc"):
        theta = theta0 + np.radians(rng.uniform(0.5, 0.8) * rng.choice([-1, 1])) * k[:, 0]
        radius = rng.uniform(2.4, 2.7) + (rng.uniform(0.005, 0.012) * rng.choice([-1, 1]) * k[:, 0] if path == "arc" else 0)
        eye = np.stack([radius * np.cos(theta), radius * np.sin(theta), height], -1)
        target = wander
    else:
        # Demo choice: heading relative to the inward direction: 90° = sideways (tangent to the ring), less
        # = forward-oblique; the view looks inward, turned towards the heading by up to 60°, panning slowly.
        inward = theta0 + np.pi
        heading = inward + rng.choice([-1, 1]) * rng.uniform(np.radians(40), np.radians(100))
        look = inward + rng.uniform(-0.3, 0.6) * (heading - inward) + 0.08 * np.sin(k[:, 0] / 20 + ph[3])
        start = rng.uniform(2.3, 2.8) * np.array([np.cos(theta0), np.sin(theta0)])
        xy = start + rng.uniform(0.02, 0.03) * k * [np.cos(heading), np.sin(heading)]
        eye = np.concatenate([xy, height[:, None]], -1)
        target = eye + 3 * np.stack([np.cos(look), np.sin(look), np.full(n, rng.uniform(-0.35, -0.1))], -1)
    fwd = (target - eye) / np.linalg.norm(target - eye, axis=-1, keepdims=True)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    roll = 0.05 * np.sin(k / 15 + ph[4])
    right, down = np.cos(roll) * right + np.sin(roll) * down, np.cos(roll) * down - np.sin(roll) * right
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = np.stack([right, down, fwd], -1), eye
    return c2w


def _clear(objects, eye):
    """Whether every camera centre eye (n, 3) keeps CLEARANCE from the room's walls and ceiling and from every
    object's bounding vertical cylinder."""
    room = objects[0][2]
    ok = (np.abs(eye[:, :2]) < room[:2] - CLEARANCE).all(-1)
    ok &= (eye[:, 2] > CLEARANCE) & (eye[:, 2] < 2 * room[2] - CLEARANCE)
    for _, centre, half, _, _ in objects[1:]:
        ok &= np.linalg.norm(eye[:, :2] - centre[:2], axis=-1) > np.linalg.norm(half[:2]) + CLEARANCE
    return bool(ok.all())


def _views_ok(objects, c2w):
    """Whether every 4th frame, cast at 24 x 24 px with the narrowest field of view drawn (f = size), shows at
    least two objects besides the room and no single surface over 60 % of the image."""
    K = np.array([[24.0, 0, 12], [0, 24, 12], [0, 0, 1]])
    for pose in c2w[::4]:
        _, obj, face, _ = _cast(objects, K, pose, (24, 24))
        if len(np.unique(obj)) < 3 or np.bincount((6 * obj + face).ravel()).max() > 0.6 * obj.size:
            return False
    return True


def _scene_geometry(rng, n, path):
    """Objects and a camera path c2w (n, 4, 4) of kind `path`: a layout, then up to ten paths for it, until
    a path keeps its clearance all along and its views are varied (a new layout when none is)."""
    while True:
        objects, theta0 = _synth_layout(rng)
        for _ in range(10):
            c2w = _camera_path(rng, n, theta0, path)
            if _clear(objects, c2w[:, :3, 3]) and _views_ok(objects, c2w):
                return objects, c2w


def _lighting(rng, n):
    """Per-frame light direction (n, 3), ambient share, exposure gain (n,), gamma (n,) and colour cast (n, 3):
    smooth and small (gain ±12 %, gamma ±8 %, cast ±4 %, the light turning 0.5-1.5° per frame: 12-35° over the
    probe's 23-frame gaps), so a surface stays recognisable across a sample's frames while its brightness changes."""
    # Demo choice: these sizes (a guess): enough that exact colour constancy across frames cannot be relied on,
    # small enough that colours at a track agree far better than at random point pairs (tests/test_synth.py).
    k = np.arange(n)[:, None]
    ph = rng.uniform(0, 2 * np.pi, 6)
    azimuth = rng.uniform(0, 2 * np.pi) + np.radians(rng.uniform(0.5, 1.5) * rng.choice([-1, 1])) * k[:, 0]
    elevation = rng.uniform(np.radians(35), np.radians(70))
    light = np.stack([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation),
                      np.full(n, np.sin(elevation))], -1)
    gain = 1 + 0.12 * np.sin(k[:, 0] / 20 + ph[0])
    gamma = 1 + 0.08 * np.sin(k[:, 0] / 27 + ph[1])
    cast = 1 + 0.04 * np.sin(k / 33 + ph[2:5])
    return light, rng.uniform(0.55, 0.75), gain, gamma, cast


def _intersect(kind, o, d, h):
    """Ray parameters t (P,) of the first hit (inf where none) and face ids (P,), in the object's frame:
    origin o (3, 1), directions d (3, P), half extents h (3, 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind in ("room", "box"):  # slab test
            t1, t2 = (-h - o) / d, (h - o) / d  # (3, P)
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            slab = far if kind == "room" else near  # leave the room through its far slab, enter a box through its near one
            t = slab.min(0) if kind == "room" else slab.max(0)  # (P,)
            axis = np.where(slab[0] == t, 0, np.where(slab[1] == t, 1, 2))
            side = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2])) > 0
            if kind == "box":
                t = np.where((t <= far.min(0)) & (t > EPS), t, np.inf)
            return t, 2 * axis + (side == (kind == "room"))
        r = h[0, 0]
        if kind == "sphere":
            a, b, c = (d * d).sum(0), (o * d).sum(0), (o * o).sum() - r * r
        else:  # the infinite cylinder x² + y² = r², cut at |z| <= h_z, and the top cap z = h_z
            a, b, c = (d[:2] * d[:2]).sum(0), (o[:2] * d[:2]).sum(0), (o[:2] * o[:2]).sum() - r * r
        t = (-b - np.sqrt(b * b - a * c)) / a  # the near root (the camera is outside every object)
        t = np.where(np.isfinite(t) & (t > EPS), t, np.inf)
        if kind == "sphere":
            return t, np.zeros(t.shape, int)
        t = np.where(np.abs(o[2] + t * d[2]) <= h[2], t, np.inf)
        cap = (h[2] - o[2]) / d[2]
        cap = np.where((cap > EPS) & ((o[0] + cap * d[0]) ** 2 + (o[1] + cap * d[1]) ** 2 <= r * r), cap, np.inf)
        return np.minimum(t, cap), (cap < t).astype(int)


def _surface(kind, p, h, face):
    """Normals (3, P) and texture coordinates (2, P) in metres (s, t) of points p (3, P) on one face,
    in the object's frame; h (3,) half extents."""
    h = h[:, None]
    if kind in ("room", "box"):
        axes = [a for a in range(3) if a != face // 2]
        normal = np.zeros_like(p)
        normal[face // 2] = (1 if face % 2 else -1) * (-1 if kind == "room" else 1)  # the room's point inwards
        return normal, p[axes] + h[axes]
    r = h[0]
    if kind == "cylinder" and face == 1:
        return np.array([0, 0, 1.0])[:, None] + 0 * p, p[:2] + r
    angle = (np.arctan2(p[1], p[0]) + np.pi) * r  # arc length around z
    if kind == "cylinder":
        return np.stack([p[0] / r, p[1] / r, 0 * p[2]]), np.stack([angle, p[2] + h[2]])
    return p / r, np.stack([angle, np.arccos(np.clip(p[2] / r, -1, 1)) * r])


def _cast(objects, K, c2w, size):
    """Ray-cast one frame's geometry: exact z-depth (H, W), object ids (H, W), face ids (H, W) and world ray
    directions (3, H, W). Ray p(t) = o + t·R K⁻¹[u, v, 1]ᵀ has camera z = t, so the hit parameter t is the
    z-depth. Objects other than the room are tested only inside the image rectangle their bounding box
    projects to."""
    H, W = size
    v, u = np.mgrid[:H, :W].astype(np.float32) + 0.5
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)])  # (3, H, W)
    # (3, H, W) world ray directions; einsum, as BLAS threads slow this (3, 3) @ (3, P) down
    d = np.einsum("ij,jhw->ihw", c2w[:3, :3].astype(np.float32), rays)
    eye = c2w[:3, 3]
    best, hit_obj, hit_face = np.full((H, W), np.inf, np.float32), np.zeros((H, W), int), np.zeros((H, W), int)
    for b, (kind, centre, half, yaw, _) in enumerate(objects):
        v0, v1, u0, u1 = 0, H, 0, W
        if b:  # the image rectangle of the object's bounding box; skipped when wholly behind the camera
            R = _rot_z(yaw)
            corners = centre + (np.stack(np.meshgrid(*[[-1, 1]] * 3), -1).reshape(-1, 3) * half) @ R.T  # (8, 3)
            cam = (corners - eye) @ c2w[:3, :3]  # (8, 3)
            if (cam[:, 2] <= EPS).all():
                continue
            if (cam[:, 2] > EPS).all():
                uv = cam[:, :2] / cam[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
                (u0, v0), (u1, v1) = np.floor(uv.min(0)).astype(int) - 1, np.ceil(uv.max(0)).astype(int) + 1
                u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, W), min(v1, H)
                if u0 >= u1 or v0 >= v1:
                    continue
        R = _rot_z(yaw).astype(np.float32)
        o = (R.T @ (eye - centre)).astype(np.float32)[:, None]  # (3, 1)
        db = np.einsum("ji,jp->ip", R, d[:, v0:v1, u0:u1].reshape(3, -1))  # (3, P_rect)
        t, face = _intersect(kind, o, db, half.astype(np.float32)[:, None])
        t, face = t.reshape(v1 - v0, u1 - u0), face.reshape(v1 - v0, u1 - u0)
        hit = t < best[v0:v1, u0:u1]
        best[v0:v1, u0:u1] = np.where(hit, t, best[v0:v1, u0:u1])
        hit_obj[v0:v1, u0:u1] = np.where(hit, b, hit_obj[v0:v1, u0:u1])
        hit_face[v0:v1, u0:u1] = np.where(hit, face, hit_face[v0:v1, u0:u1])
    return best, hit_obj, hit_face, d


def _render(objects, textures, K, c2w, size, light, ambient):
    """One frame: RGB float32 (H, W, 3) in [0, 1] before exposure (texture × Lambert shading) and exact
    z-depth (H, W). light (3,) unit direction towards the light; ambient: the unlit share of brightness."""
    H, W = size
    best, hit_obj, hit_face, d = _cast(objects, K, c2w, size)
    best, hit_obj, hit_face, d = best.reshape(-1), hit_obj.reshape(-1), hit_face.reshape(-1), d.reshape(3, -1)
    eye = c2w[:3, 3]
    rgb = np.zeros((d.shape[1], 3), np.float32)
    for b, (kind, centre, half, yaw, tex_id) in enumerate(objects):
        in_b = np.flatnonzero(hit_obj == b)
        R = _rot_z(yaw)
        points = np.einsum("ji,jp->ip", R, eye[:, None] + best[in_b] * d[:, in_b] - centre[:, None])  # (3, P_b) local
        for face in np.flatnonzero(np.bincount(hit_face[in_b], minlength=1)):
            sel = hit_face[in_b] == face
            normal, st = _surface(kind, points[:, sel], half, face)
            tex = textures[tex_id][face]
            s = np.clip(st[0] * TEXELS_PER_M - 0.5, 0, tex.shape[1] - 1.001)  # bilinear lookup
            t = np.clip(st[1] * TEXELS_PER_M - 0.5, 0, tex.shape[0] - 1.001)
            s0, t0 = s.astype(int), t.astype(int)
            fs, ft, i, w = (s - s0)[:, None], (t - t0)[:, None], t0 * tex.shape[1] + s0, tex.shape[1]
            flat = tex.reshape(-1, 3)
            colour = ((flat[i] * (1 - fs) + flat[i + 1] * fs) * (1 - ft)
                      + (flat[i + w] * (1 - fs) + flat[i + w + 1] * fs) * ft)
            lit = np.clip(np.asarray(light) @ (R @ normal), 0, None)  # (P_f,) Lambert
            rgb[in_b[sel]] = colour * (ambient + (1 - ambient) * lit)[:, None]
    return rgb.reshape(H, W, 3), best.reshape(H, W)


def synth_scene(out_dir, seed, num_frames=64, size=448):
    """Render one synthetic scene in DL3DV layout: images/ (size x size), images_2/ (half), depths/
    (float32 z-depth at full size), transforms.json (nerfstudio/OpenGL c2w, OPENCV with zero distortion).
    transforms.json (under "synthetic": the seed, version, camera path and every object) is written last, so
    its presence marks a complete scene (scenes/layout.py). Deterministic in seed."""
    rng = np.random.default_rng(seed)
    # Demo choice: path kinds cycle with the seed rather than being drawn, so that any few consecutive scenes
    # hold each kind.
    path = PATHS[seed % len(PATHS)]
    objects, c2w = _scene_geometry(rng, num_frames, path)
    textures = {}  # texture id -> one texture (t texels, s texels, 3) per face, each of its own family
    for kind, _, half, _, tex_id in objects:
        if tex_id not in textures:
            textures[tex_id] = [_texture(rng, int(t * TEXELS_PER_M) + 2, int(s * TEXELS_PER_M) + 2, rng.integers(4))
                                for s, t in _face_sizes(kind, half)]
    light, ambient, gain, gamma, cast = _lighting(rng, num_frames)
    f = size * rng.uniform(0.8, 1.0)
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])

    def frames():  # rendered one at a time as write_scene stores them
        for k in range(num_frames):
            rgb, depth = _render(objects, textures, K, c2w[k], (size, size), light[k], ambient)
            rgb = gain[k] * cast[k] * rgb ** gamma[k]  # exposure, tone curve and colour cast of this frame
            yield (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32)

    record = {"version": SYNTH_VERSION, "seed": seed, "camera_path": path, "room": objects[0][2].tolist(),
              "objects": [dict(kind=kind, centre=c.tolist(), half=h.tolist(), yaw=y, texture=t)
                          for kind, c, h, y, t in objects[1:]]}
    record["boxes"] = [o for o in record["objects"] if o["kind"] == "box"]
    return write_scene(out_dir, frames(), K, c2w, (size, size), {"synthetic": record})


def make_synthetic(root, n_scenes, seed=0, num_frames=64, size=448):
    """Write scenes root/scene_0000 ... with seeds seed, seed + 1, ...; complete scenes rendered by this
    version with the same seed, size and frame count are kept, others (re)rendered."""
    return make_scenes(root, synth_scene, n_scenes, seed, num_frames, size, "synthetic", SYNTH_VERSION,
                       f"synthetic scenes in {root}")


def ensure_synthetic(root="data/synthetic", n_train=24, n_val=8, size=448, frames=48, val_frames=24):
    """The project's default data: root/train (seeds 0...) and root/val (seeds 10000...), made if absent.
    Demo choices: many short scenes rather than a few long ones, so that the heads learn geometry that holds
    across rooms rather than fit a handful of rooms (with a few long scenes, held-out matching falls while the
    training loss keeps falling); training scenes twice the probe's 24 frames, so that most anchors' +-24-frame
    window is full and long gaps are drawn nearly as often as short ones (a gap of 20 or more in 15 % of the
    pairs, against 4 % in 24-frame scenes; 21 % if uniform); held-out scenes of exactly 24 frames, so that the
    24-frame probe reads each whole scene once, 8 scenes for its 8 samples."""
    root = Path(root)
    return (make_synthetic(root / "train", n_train, 0, frames, size),
            make_synthetic(root / "val", n_val, 10_000, val_frames, size))


def main(argv=None):
    generator_main(argv, "Render synthetic scenes in DL3DV layout (images/, images_2/, depths/, transforms.json).",
                   make_synthetic, scenes=8, frames=64, seed=0)


if __name__ == "__main__":
    main()
