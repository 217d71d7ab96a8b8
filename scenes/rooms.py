"""A second, independent scene generator in DL3DV layout, used only to validate (never to tune) the demo.

The demo trains and tunes on synth.py's scenes (boxes in a box, noise textures, orbits). To report how
what it learned generalises, this file renders scenes that differ in everything that could be
over-fitted, with its own code (it shares only scenes/layout.py, the file format, with synth.py):
  geometry   rectangular or L-shaped rooms, spheres, pillars and drums (capped cylinders), ramps
             (wedges with a slanted top), panels leaning against a wall;
  textures   five procedural families (mosaic checkers, wavy stripes, brick/tile, blotchy photo-like
             patches, gradients with text-like glyph blocks), structure mostly at 0.1-1 m, i.e. 2-6
             tokens of 28 px at the demo's 448 px, so grid tokens stay matchable;
  lighting   a moving point light with flickering intensity, per-frame exposure and white balance;
  cameras    walks (dolly in/out), strafes and diagonal crab moves: translation, not orbits.
Depth is exact: every pixel's ray is intersected analytically with every primitive, and since the
ray is R·K⁻¹[u, v, 1]ᵀ (camera z = 1), the hit parameter t is the z-depth.
A scene is written by `scenes.layout.write_scene`, as synth.py's are (`images/`, `images_2/`,
`depths/<stem>.npy`, nerfstudio `transforms.json` written last), and is read back by `data.load_scene`.
Deterministic in the seed.

Run (CPU only; nothing here uses a GPU):
  python -m scenes.rooms --out data/rooms --scenes 2
  python data.py show --scene data/rooms/scene_0000 --out rooms.png

References:
  DL3DV-10K layout: https://github.com/DL3DV-10K/Dataset
  nerfstudio conventions: https://docs.nerf.studio/quickstart/data_conventions.html
  Ray-primitive intersection: Pharr, Jakob, Humphreys, "Physically Based Rendering", 4th ed., ch. 6
    (https://pbr-book.org/4ed/Shapes)
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from scenes.layout import generator_main, make_scenes, write_scene  # the file format only: no scene code is shared with synth.py

ROOMS_VERSION = 1  # bump when the renderer changes, so stale scenes are re-rendered
TPM = 64.0  # texels per metre of every texture
HIT_EPS = 1e-6  # m; smallest accepted ray parameter
# P rays (pixels) per frame; world z up, floor at z = 0; lengths in metres.

# ----------------------------------------------------------------------------- textures


def _palette(rng, n):
    """n colours (n, 3) in [0, 1] around a random hue family, with a spread in brightness, desaturated
    by a random amount (interiors are mostly muted)."""
    c = rng.random(3) + rng.normal(0, 0.28, (n, 3)) + rng.uniform(-0.3, 0.3, (n, 1))
    grey = c.mean(1, keepdims=True)
    return np.clip(grey + rng.uniform(0.4, 0.9) * (c - grey), 0.04, 0.96)


def _blur(a, radius):
    """Gaussian blur of a float (h, w, 3) array in [0, 1] through PIL (radius in texels)."""
    im = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255


def _smooth_field(rng, h, w, scale):
    """A smooth scalar field (h, w) with zero mean and unit std, structure at about `scale` texels."""
    cells = rng.normal(size=(int(h / scale) + 3, int(w / scale) + 3)).astype(np.float32)
    im = Image.fromarray(cells).resize((w + int(2 * scale), h + int(2 * scale)), Image.BICUBIC)
    f = np.asarray(im)[int(scale):int(scale) + h, int(scale):int(scale) + w]
    return (f - f.mean()) / (f.std() + 1e-6)


def _tex_mosaic(rng, h, w):
    """Checkers whose every cell has its own colour (so no two cells look alike), some with an inset."""
    cell = rng.uniform(0.18, 0.4) * TPM
    pal = _palette(rng, 6)
    ny, nx = int(h / cell) + 2, int(w / cell) + 2
    colours = pal[rng.integers(0, 6, (ny, nx))] * rng.uniform(0.7, 1.15, (ny, nx, 1))
    dark = (np.add.outer(np.arange(ny), np.arange(nx)) % 2 == 1)[..., None]
    colours = np.where(dark, colours * 0.45, colours)  # the checker
    y, x = np.mgrid[:h, :w] + 0.5
    cy, cx = (y // cell).astype(int), (x // cell).astype(int)
    t = colours[cy, cx]
    fy, fx = y / cell - cy, x / cell - cx
    inset = (rng.random((ny, nx)) < 0.35)[cy, cx] & (np.abs(fy - 0.5) < 0.22) & (np.abs(fx - 0.5) < 0.22)
    t[inset] = 1 - t[inset]
    return t


def _tex_stripes(rng, h, w):
    """Wavy stripes of random widths and colours, brightness modulated along them (no aperture problem)."""
    theta, lam = rng.uniform(0, np.pi), rng.uniform(0.6, 1.5) * TPM
    y, x = np.mgrid[:h, :w] + 0.5
    along = x * np.cos(theta) + y * np.sin(theta)
    across = -x * np.sin(theta) + y * np.cos(theta)
    p = across + rng.uniform(0.04, 0.12) * TPM * np.sin(2 * np.pi * along / lam + rng.uniform(0, 6.3))
    widths = rng.uniform(0.06, 0.35, 400) * TPM
    edges = np.cumsum(widths) + p.min() - rng.uniform(0, widths[0])
    stripe = np.clip(np.searchsorted(edges, p), 0, len(edges) - 1)
    t = _palette(rng, 7)[rng.integers(0, 7, len(edges))][stripe]
    return t * (1 + 0.28 * _smooth_field(rng, h, w, 0.5 * TPM))[..., None]


def _tex_brick(rng, h, w):
    """Brick courses (random per-row offsets) or square tiles, each unit its own shade, mortar lines."""
    row = rng.uniform(0.12, 0.25) * TPM
    length = row * (1.0 if rng.random() < 0.3 else rng.uniform(1.8, 3.0))  # tiles or bricks
    mortar = rng.uniform(0.012, 0.03) * TPM
    y, x = np.mgrid[:h, :w] + 0.5
    r = (y // row).astype(int)
    shift = rng.uniform(0, length, r.max() + 1)[r] if length > row else 0.0
    c = ((x + shift) // length).astype(int)
    pal = _palette(rng, 4)
    ids = r * 1000 + c
    uniq, inv = np.unique(ids, return_inverse=True)
    unit = pal[rng.integers(0, 4, len(uniq))] * rng.uniform(0.6, 1.25, (len(uniq), 1))
    t = unit[inv.reshape(h, w)]
    t = t * (1 + 0.12 * _smooth_field(rng, h, w, 0.15 * TPM))[..., None]  # weathering
    joint = (y % row < mortar) | ((x + shift) % length < mortar)
    t[joint] = rng.uniform(0.15, 0.9) * np.array([1.0, 0.97, 0.92])
    return t


def _tex_blotch(rng, h, w):
    """Photo-like blotches: soft overlapping ellipses of random colours at three sizes over a smooth field."""
    pal = _palette(rng, 8)
    base = 0.5 + 0.18 * np.stack([_smooth_field(rng, h, w, 0.8 * TPM) for _ in range(3)], -1)
    im = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for size, count in ((0.6, 0.8), (0.3, 2.5), (0.15, 3.0)):  # count per square metre
        for _ in range(int(count * h * w / TPM ** 2) + 1):
            cy, cx, ry, rx = rng.random() * h, rng.random() * w, *(rng.uniform(0.4, 1.0, 2) * size * TPM / 2)
            colour = tuple(int(255 * v) for v in pal[rng.integers(0, 8)])
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
    t = _blur(np.asarray(im, np.float32) / 255, rng.uniform(0.01, 0.03) * TPM)
    return t * (1 + 0.1 * _smooth_field(rng, h, w, 0.3 * TPM))[..., None]


def _glyph(rng, draw, x, y, g, colour, width):
    """A text-like glyph: 2-4 strokes between points of a 3 x 4 lattice in a g-wide, 1.4 g-high box."""
    lattice = [(x + i * g / 2, y + j * 1.4 * g / 3) for i in range(3) for j in range(4)]
    for _ in range(rng.integers(2, 5)):
        a, b = rng.choice(len(lattice), 2, replace=False)
        draw.line([lattice[a], lattice[b]], fill=colour, width=width)


def _tex_glyphs(rng, h, w):
    """A two-colour linear gradient with blocks of text-like glyphs (words on lines, like signs and posters)."""
    theta = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[:h, :w] + 0.5
    ramp = (x * np.cos(theta) + y * np.sin(theta)) / rng.uniform(1.0, 3.0) / TPM
    ramp = 0.5 + 0.5 * np.sin(ramp + rng.uniform(0, 6.3))  # smooth, never saturating on long walls
    c0, c1 = _palette(rng, 2)
    t = c0 * ramp[..., None] + c1 * (1 - ramp[..., None])
    im = Image.fromarray((np.clip(t, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(1.2 * h * w / TPM ** 2) + 1):  # ~1 block per square metre
        g = rng.uniform(0.07, 0.12) * TPM  # glyph width
        bx, by, lines = rng.random() * w, rng.random() * h, rng.integers(1, 5)
        background = t[int(by), int(bx)]
        if rng.random() < 0.5:  # a backing plate behind the block, another colour
            background = _palette(rng, 1)[0]
            draw.rectangle([bx - g, by - g, bx + g * 14, by + lines * 2.2 * g + g],
                           fill=tuple(int(255 * v) for v in background))
        dark = background.mean() > 0.5  # ink contrasts with what it is written on
        ink = tuple(int(v) for v in (rng.random(3) * 60 if dark else 195 + rng.random(3) * 60))
        for line in range(lines):
            cx = bx
            for _ in range(rng.integers(1, 4)):  # words
                for _ in range(rng.integers(2, 6)):  # letters
                    _glyph(rng, draw, cx, by + line * 2.2 * g, g, ink, max(1, int(g / 4)))
                    cx += 1.3 * g
                cx += 1.5 * g
    return np.asarray(im, np.float32) / 255


TEXTURES = {"mosaic": _tex_mosaic, "stripes": _tex_stripes, "brick": _tex_brick, "blotch": _tex_blotch,
            "glyphs": _tex_glyphs}


def _texture(rng, family, h_m, w_m):
    """Albedo (h, w, 3) float32 in [0.03, 0.95] for a surface h_m x w_m metres, from one family."""
    h, w = max(int(np.ceil(h_m * TPM)) + 2, 4), max(int(np.ceil(w_m * TPM)) + 2, 4)
    return np.clip(TEXTURES[family](rng, h, w), 0.03, 0.95).astype(np.float32)


# ----------------------------------------------------------------------------- geometry
# A primitive is a dict: kind ("quad", "tri", "sphere", "cylinder", "disk"), its parameters as lists
# (JSON-ready), and "tex" (index into the scene's textures). Quads are parallelograms p0 + a·e1 + b·e2
# with 0 <= a, b <= 1; "tri" the half a + b <= 1. Cylinders are vertical (axis z) without caps; a cap
# is a "disk" with normal z. Every surface is two-sided.


def _quad(p0, e1, e2, tex, kind="quad"):
    return dict(kind=kind, p0=list(map(float, p0)), e1=list(map(float, e1)), e2=list(map(float, e2)), tex=tex)


def _plane_frame(prim):
    """Quad/tri: unit normal n, dual basis M (2, 3) with (a, b) = M (X - p0), in-plane orthonormal u1, u2
    and the offsets that make the texture coordinates (X - p0)·u - offset non-negative on the shape."""
    p0, e1, e2 = (np.array(prim[k]) for k in ("p0", "e1", "e2"))
    n = np.cross(e1, e2)
    n /= np.linalg.norm(n)
    M = np.linalg.pinv(np.stack([e1, e2], 1))  # (2, 3)
    u1 = e1 / np.linalg.norm(e1)
    u2 = np.cross(n, u1)
    corners = np.stack([np.zeros(3), e1, e2, e1 + e2])  # (4, 3)
    return n, M, u1, u2, (corners @ u1).min(), (corners @ u2).min(), np.ptp(corners @ u1), np.ptp(corners @ u2)


def _intersect(prim, o, d, dd):
    """Ray parameter t (P,) of the first hit of rays o + t·d (o (3,), d (3, P)) with prim; inf where missed.
    dd (P,) = |d|². Each shape in closed form: planes t = (p0 - o)·n / (d·n); sphere and cylinder the
    smaller root of |o + t d - c|² = r² (in xy for the cylinder): the camera is never inside one."""
    k = prim["kind"]
    with np.errstate(divide="ignore", invalid="ignore"):
        if k in ("quad", "tri"):
            n, M, *_ = _plane_frame(prim)
            p0 = np.array(prim["p0"])
            dn = n[0] * d[0] + n[1] * d[1] + n[2] * d[2]
            t = (p0 - o) @ n / dn
            r0 = M @ (o - p0)  # (2,) (a, b) of the ray origin, plus t times the rate below
            a = r0[0] + t * (M[0, 0] * d[0] + M[0, 1] * d[1] + M[0, 2] * d[2])
            b = r0[1] + t * (M[1, 0] * d[0] + M[1, 1] * d[1] + M[1, 2] * d[2])
            inside = (a >= 0) & (b >= 0) & ((a + b <= 1) if k == "tri" else ((a <= 1) & (b <= 1)))
        elif k == "disk":
            c, r = np.array(prim["centre"]), prim["radius"]
            t = (c[2] - o[2]) / d[2]
            inside = (o[0] + t * d[0] - c[0]) ** 2 + (o[1] + t * d[1] - c[1]) ** 2 <= r * r
        elif k == "sphere":
            oc, r = o - np.array(prim["centre"]), prim["radius"]
            b = oc[0] * d[0] + oc[1] * d[1] + oc[2] * d[2]
            disc = b * b - dd * (oc @ oc - r * r)
            t = (-b - np.sqrt(disc)) / dd
            inside = disc >= 0
        elif k == "cylinder":
            c, r = np.array(prim["centre"]), prim["radius"]  # centre = (x, y, z of the bottom)
            ox, oy = o[0] - c[0], o[1] - c[1]
            A, B = d[0] ** 2 + d[1] ** 2, ox * d[0] + oy * d[1]
            disc = B * B - A * (ox * ox + oy * oy - r * r)
            t = (-B - np.sqrt(disc)) / A
            z = o[2] + t * d[2]
            inside = (disc >= 0) & (z >= c[2]) & (z <= c[2] + prim["height"])
        else:
            raise ValueError(f"unknown primitive kind {k!r}")
    return np.where(inside & (t > HIT_EPS), t, np.inf)


def cast(prims, o, d):
    """First hits of rays o + t·d: t (P,) (inf = no hit) and the primitive index (P,) (-1 = no hit)."""
    dd = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    best, which = np.full(d.shape[1], np.inf), np.full(d.shape[1], -1)
    for i, prim in enumerate(prims):
        t = _intersect(prim, o, d, dd)
        closer = t < best
        best, which = np.where(closer, t, best), np.where(closer, i, which)
    return best, which


def _surface(prim, X):
    """Texture coordinates in metres (s, t) and unit normals (3, P) of points X (3, P) on prim;
    wrap = the circumference when s wraps around (sphere, cylinder), else 0."""
    k = prim["kind"]
    if k in ("quad", "tri"):
        n, _, u1, u2, s0, t0, *_ = _plane_frame(prim)
        rel = X - np.array(prim["p0"])[:, None]
        return u1 @ rel - s0, u2 @ rel - t0, np.repeat(n[:, None], X.shape[1], 1), 0.0
    c, r = np.array(prim["centre"]), prim["radius"]
    rel = X - c[:, None]
    if k == "disk":
        return rel[0] + r, rel[1] + r, np.repeat([[0.0], [0.0], [1.0]], X.shape[1], 1), 0.0
    az = np.arctan2(rel[1], rel[0]) % (2 * np.pi)
    if k == "sphere":
        normal = rel / r
        return az * r, np.arccos(np.clip(normal[2], -1, 1)) * r, normal, 2 * np.pi * r
    normal = np.stack([rel[0] / r, rel[1] / r, np.zeros(X.shape[1])])  # cylinder
    return az * r, rel[2], normal, 2 * np.pi * r


def _texture_size(prim):
    """(height, width) in metres of the texture a primitive needs."""
    k = prim["kind"]
    if k in ("quad", "tri"):
        *_, w, h = _plane_frame(prim)
        return h, w
    r = prim["radius"]
    if k == "cylinder":
        return prim["height"], 2 * np.pi * r
    return {"disk": (2 * r, 2 * r), "sphere": (np.pi * r, 2 * np.pi * r)}[k]


def _lookup(tex, s, t, wrap):
    """Bilinear texture lookup at (s, t) metres -> (P, 3); s wraps around when wrap (the circumference) > 0,
    else coordinates clamp to the texture."""
    h, w = tex.shape[:2]
    y = np.clip(t * TPM - 0.5, 0, h - 1.001)
    if wrap:
        x = (s / wrap * w - 0.5) % w
        x0 = np.minimum(x.astype(int), w - 1)
        x1 = (x0 + 1) % w
    else:
        x = np.clip(s * TPM - 0.5, 0, w - 1.001)
        x0 = x.astype(int)
        x1 = x0 + 1
    y0 = y.astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return ((tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx) * (1 - fy)
            + (tex[y0 + 1, x0] * (1 - fx) + tex[y0 + 1, x1] * fx) * fy)


def render(prims, textures, K, c2w, size, light):
    """Ray-cast one frame. K (3, 3), c2w (4, 4) OpenCV camera-to-world, size (H, W), light = dict(pos (3,),
    intensity, exposure, tint (3,)). -> rgb float32 (H, W, 3) in [0, 1], z-depth float32 (H, W), primitive
    index (H, W). Ray p(t) = o + t·R K⁻¹[u, v, 1]ᵀ has camera z = t, so the hit t is the z-depth.
    Shading: albedo · (ambient + intensity · max(0, n·l) · falloff) · exposure · tint, in linear light."""
    H, W = size
    v, u = np.mgrid[:H, :W].reshape(2, -1) + 0.5
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(H * W)])  # (3, P) camera
    R, o = c2w[:3, :3], c2w[:3, 3]
    d = R[:, :1] * rays[0] + R[:, 1:2] * rays[1] + R[:, 2:3] * rays[2]  # (3, P) world; no BLAS threads
    t, which = cast(prims, o, d)
    if np.isinf(t).any():
        raise ValueError(f"{int(np.isinf(t).sum())} rays left the scene: rooms must be closed")
    rgb = np.zeros((H * W, 3), np.float32)
    for i in np.unique(which):
        sel = np.flatnonzero(which == i)
        X = o[:, None] + t[sel] * d[:, sel]  # (3, P_i) hit points
        s, tt, normal, wrap = _surface(prims[i], X)
        albedo = _lookup(textures[prims[i]["tex"]], s, tt, wrap) ** 2.2  # (P_i, 3) linear
        normal = normal * -np.sign((normal * d[:, sel]).sum(0) + 1e-12)  # two-sided: face the camera
        to_light = np.asarray(light["pos"])[:, None] - X
        dist2 = (to_light ** 2).sum(0)
        lambert = np.maximum((normal * to_light).sum(0) / np.sqrt(dist2), 0)
        # Demo choice: ambient 0.3 plus a point light with 1 / (1 + dist²/9) falloff, no shadows: enough
        # spatial shading to vary with the light's motion, never a black frame.
        shade = 0.3 + 1.3 * light["intensity"] * lambert / (1 + dist2 / 9.0)
        rgb[sel] = albedo * (shade * light["exposure"])[:, None] * np.asarray(light["tint"])
    rgb = np.clip(rgb, 0, 1) ** (1 / 2.2)
    return rgb.reshape(H, W, 3), t.reshape(H, W).astype(np.float32), which.reshape(H, W)


# ----------------------------------------------------------------------------- scene layout


def _room(rng):
    """Floor [0, A] x [0, B], ceiling at height Hc; with probability 0.7 an L: the corner
    [A - a, A] x [B - b, B] is cut out (its two walls face into the room). -> quads, dims, free region
    for the camera (the full-width part, 0.9 m from the walls), the notch or None."""
    A, B, Hc = rng.uniform(6.0, 9.0), rng.uniform(5.5, 7.5), rng.uniform(2.6, 3.4)
    notch = (A * rng.uniform(0.3, 0.5), B * rng.uniform(0.25, 0.4)) if rng.random() < 0.7 else None
    e = 0.01  # every room face overlaps its neighbours by 1 cm, so no ray slips out through an edge
    quads = [_quad([-e, -e, 0], [A + 2 * e, 0, 0], [0, B + 2 * e, 0], 0),  # floor
             _quad([-e, -e, Hc], [A + 2 * e, 0, 0], [0, B + 2 * e, 0], 1),  # ceiling
             _quad([-e, 0, -e], [A + 2 * e, 0, 0], [0, 0, Hc + 2 * e], 2),  # walls y = 0, y = B, x = 0, x = A
             _quad([-e, B, -e], [A + 2 * e, 0, 0], [0, 0, Hc + 2 * e], 3),
             _quad([0, -e, -e], [0, B + 2 * e, 0], [0, 0, Hc + 2 * e], 4),
             _quad([A, -e, -e], [0, B + 2 * e, 0], [0, 0, Hc + 2 * e], 5)]
    # An L needs no other change: the floor, ceiling and outer walls beyond the notch stay behind its walls
    # (which overlap outwards only, never past the inner corner).
    if notch:
        a, b = notch
        quads += [_quad([A - a, B - b, -e], [a + e, 0, 0], [0, 0, Hc + 2 * e], 6),
                  _quad([A - a, B - b, -e], [0, b + e, 0], [0, 0, Hc + 2 * e], 7)]
    free = ((0.9, A - 0.9), (0.9, B - (notch[1] if notch else 0) - 0.9))
    return quads, (A, B, Hc), free, notch


def _camera_segment(rng, free):
    """The camera's track: a centre, a unit direction in the floor plane and a half-length (0.6-1.5 m)
    that keeps the whole segment inside the free region."""
    (x0, x1), (y0, y1) = free
    for _ in range(1000):
        c = rng.uniform([x0, y0], [x1, y1])
        phi = rng.uniform(0, 2 * np.pi)
        u = np.array([np.cos(phi), np.sin(phi)])
        with np.errstate(divide="ignore"):
            room = np.minimum(np.where(u > 0, ([x1, y1] - c) / u, ([x0, y0] - c) / u),
                              np.where(u < 0, ([x1, y1] - c) / -u, ([x0, y0] - c) / -u))
        half = min(room.min(), 1.5)
        if half >= 0.6:
            return c, u, half
    raise RuntimeError(f"no camera segment fits the free region {free}")


def _segment_distance(p, c, u, half):
    """Distance of floor points p (..., 2) from the segment c ± half·u."""
    along = np.clip((p - c) @ u, -half, half)
    return np.linalg.norm(p - c - along[..., None] * u, axis=-1)


def _objects(rng, dims, notch, segment, look_yaw, first_tex):
    """5-8 objects on the floor: spheres, drums with a sphere on top, pillars, ramps, panels leaning on a
    wall. Each footprint circle keeps 0.7 m from the camera's segment, 0.1 m from the others and stays out
    of the notch. About 60 % of the free-standing ones go ahead of the camera (1.5-4.5 m along its mean
    view), the rest anywhere in the room. -> primitives, object kinds."""
    A, B, Hc = dims
    c, u, half = segment
    prims, kinds, placed, tex = [], [], [], first_tex  # placed: (x, y, footprint radius)
    ahead = np.array([np.cos(look_yaw), np.sin(look_yaw)])
    walls = [((0, 0), (1, 0), (0, -1), A), ((0, B), (1, 0), (0, 1), A),  # (start, along, outward, length)
             ((0, 0), (0, 1), (-1, 0), B), ((A, 0), (0, 1), (1, 0), B)]
    for _ in range(rng.integers(5, 9)):
        kind = str(rng.choice(["sphere", "drum", "pillar", "ramp", "panel"], p=[0.25, 0.2, 0.15, 0.25, 0.15]))
        size = dict(sphere=rng.uniform(0.25, 0.6), drum=rng.uniform(0.3, 0.55), pillar=rng.uniform(0.12, 0.3),
                    ramp=rng.uniform(0.5, 0.9), panel=rng.uniform(0.4, 0.8))[kind]  # footprint radius
        height = min(rng.uniform(1.0, 2.2), Hc - 0.2)  # panels
        lean = height * rng.uniform(0.15, 0.35)
        for _ in range(300):
            if kind == "panel":  # footprint centre: lean / 2 in front of a wall, the panel inside the wall's span
                start, along, out, length = (np.array(v, float) for v in walls[rng.integers(4)])
                if length < 2 * size + 0.2:
                    continue
                p = start + along * rng.uniform(size + 0.1, length - size - 0.1) - out * lean / 2
                inside = True
            else:
                p = (c + ahead * rng.uniform(1.5, 4.5) + np.array([-ahead[1], ahead[0]]) * rng.uniform(-1.5, 1.5)
                     if rng.random() < 0.6 else rng.uniform([0, 0], [A, B]))
                inside = size + 0.05 <= p[0] <= A - size - 0.05 and size + 0.05 <= p[1] <= B - size - 0.05
            in_notch = notch is not None and p[0] > A - notch[0] - size - 0.05 and p[1] > B - notch[1] - size - 0.05
            clear = all(np.hypot(*(p - q[:2])) > size + q[2] + 0.1 for q in placed)
            if inside and not in_notch and clear and _segment_distance(p, c, u, half) > size + 0.7:
                break
        else:
            continue  # no room for it
        placed.append((p[0], p[1], size))
        kinds.append(kind)
        floor = np.array([p[0], p[1], 0.0])
        if kind == "sphere":
            prims.append(dict(kind="sphere", centre=[p[0], p[1], size], radius=size, tex=tex))
            tex += 1
        elif kind == "drum":
            h, rs = rng.uniform(0.35, 0.8), size * rng.uniform(0.6, 1.0)
            prims += [dict(kind="cylinder", centre=floor.tolist(), radius=size, height=h, tex=tex),
                      dict(kind="disk", centre=[p[0], p[1], h], radius=size, tex=tex + 1),
                      dict(kind="sphere", centre=[p[0], p[1], h + rs], radius=rs, tex=tex + 2)]
            tex += 3
        elif kind == "pillar":
            prims.append(dict(kind="cylinder", centre=floor.tolist(), radius=size, height=Hc, tex=tex))
            tex += 1
        elif kind == "ramp":  # a wedge: slanted top rising along el, vertical back, two triangular sides
            yaw, h, alpha = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.9), rng.uniform(0.35, 0.7)
            el, ew = np.array([np.cos(yaw), np.sin(yaw), 0]), np.array([-np.sin(yaw), np.cos(yaw), 0])
            length, width = 2 * size * np.cos(alpha), 2 * size * np.sin(alpha)  # half-diagonal = size
            p0 = floor - el * length / 2 - ew * width / 2
            top, up = el * length + [0, 0, h], np.array([0, 0, h])
            prims += [_quad(p0, ew * width, top, tex), _quad(p0 + el * length, ew * width, up, tex + 1),
                      _quad(p0, el * length, top, tex + 2, "tri"),
                      _quad(p0 + ew * width, el * length, top, tex + 3, "tri")]
            tex += 4
        else:  # panel: bottom edge on the floor lean from the wall, top edge against the wall
            out3, along3 = np.append(out, 0), np.append(along, 0)
            foot = floor - out3 * lean / 2 - along3 * size
            prims.append(_quad(foot, along3 * 2 * size, out3 * lean + [0, 0, np.sqrt(height ** 2 - lean ** 2)], tex))
            tex += 1
    return prims, kinds


def _camera_path(rng, n, segment, look_yaw):
    """c2w (n, 4, 4) OpenCV. Position: back and forth along the segment, c + half·sin(ω k + φ)·u with a peak
    speed of 2-3.5 cm per frame, a small sideways sway and a walking bob. View: yaw around look_yaw
    (±~12°; the path kind, walk / strafe / crab, set look_yaw), pitched down 5-20°, a little roll.
    Demo choice: this speed keeps the median image motion near the training scenes' (2-4 px per frame at
    448 px), so the held-out set tests generalisation rather than a harder matching problem."""
    c, u, half = segment
    k = np.arange(n)
    w = rng.uniform(0.02, 0.035) / half  # rad per frame
    # Demo choice: start near one end of the track, moving, so even short clips translate.
    phase = rng.uniform(-1.0, -0.2) + w * k
    ph = rng.uniform(0, 2 * np.pi, 6)
    side = np.array([-u[1], u[0]])
    xy = c + half * np.sin(phase)[:, None] * u + 0.08 * np.sin(k / 21 + ph[0])[:, None] * side
    z = rng.uniform(1.3, 1.7) + 0.03 * np.sin(k / 4.5 + ph[1])
    eye = np.concatenate([xy, z[:, None]], 1)  # (n, 3)
    yaw = look_yaw + 0.2 * np.sin(k / 40 + ph[2]) + 0.04 * np.sin(k / 12 + ph[3])
    pitch = -rng.uniform(0.09, 0.35) + 0.05 * np.sin(k / 19 + ph[4])
    roll = 0.03 * np.sin(k / 13 + ph[5])
    fwd = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)], -1)
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros(n)], -1)  # horizontal, fwd x z-up
    down = np.cross(fwd, right)
    right, down = (np.cos(roll)[:, None] * right + np.sin(roll)[:, None] * down,
                   np.cos(roll)[:, None] * down - np.sin(roll)[:, None] * right)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = np.stack([right, down, fwd], -1), eye
    return c2w


def layout(rng):
    """A whole scene but the camera's frame count: primitives, texture families per texture index,
    camera segment, path kind and mean view yaw, room dims."""
    quads, dims, free, notch = _room(rng)
    segment = _camera_segment(rng, free)
    kind = str(rng.choice(["walk", "strafe", "crab"]))
    (c, u, _), (A, B, _) = segment, dims
    move = np.arctan2(u[1], u[0])
    room_ahead = min(((A if u[0] > 0 else 0) - c[0]) / u[0] if u[0] else np.inf,
                     ((B if u[1] > 0 else 0) - c[1]) / u[1] if u[1] else np.inf)
    room_behind = min(((0 if u[0] > 0 else A) - c[0]) / -u[0] if u[0] else np.inf,
                      ((0 if u[1] > 0 else B) - c[1]) / -u[1] if u[1] else np.inf)
    # walk: look along the track, towards the farther wall (dolly in and out); strafe: across the track;
    # crab: 30-60° off it.
    look_yaw = move + {"walk": 0.0 if room_ahead >= room_behind else np.pi,
                       "strafe": rng.choice([-1, 1]) * np.pi / 2,
                       "crab": rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)}[kind]
    objects, kinds = _objects(rng, dims, notch, segment, look_yaw, first_tex=8)
    return dict(prims=quads + objects, dims=dims, notch=notch, segment=segment, path=kind,
                look_yaw=float(look_yaw), objects=kinds)


def _lights(rng, n, dims):
    """Per frame: a point light circling 0.5 m below the ceiling, flickering intensity, exposure (automatic
    exposure hunting: a slow drift and a quicker wobble, about ±25 %) and white balance (±4 % per channel)."""
    A, B, Hc = dims
    k = np.arange(n)
    ph = rng.uniform(0, 2 * np.pi, 6)
    centre = rng.uniform([0.3 * A, 0.3 * B], [0.6 * A, 0.6 * B])
    radius, speed = rng.uniform(0.3, 0.8), rng.uniform(0.01, 0.03)  # m, rad per frame
    pos = np.stack([centre[0] + radius * np.cos(speed * k + ph[0]), centre[1] + radius * np.sin(speed * k + ph[0]),
                    np.full(n, Hc - 0.5)], -1)
    intensity = 1 + 0.15 * np.sin(k / 11 + ph[1])
    exposure = np.exp(0.15 * np.sin(k / 17 + ph[2]) + 0.07 * np.sin(k / 3.7 + ph[3]))
    tint = 1 + 0.04 * np.sin(k[:, None] / 23 + ph[4] + np.array([0, 2.1, 4.2]))
    return [dict(pos=pos[i], intensity=intensity[i], exposure=exposure[i], tint=tint[i]) for i in range(n)]


def rooms_scene(out_dir, seed, num_frames=48, size=448):
    """Render one validation scene in DL3DV layout: images/ (size x size), images_2/ (half), depths/ (float32
    z-depth at full size, every pixel valid: rooms are closed), transforms.json (nerfstudio/OpenGL c2w,
    OPENCV with zero distortion) written last, so its presence marks a complete scene. Deterministic in seed."""
    rng = np.random.default_rng(seed)
    scene = layout(rng)
    prims = scene["prims"]
    n_tex = max(p["tex"] for p in prims) + 1
    sizes = {}
    for p in prims:
        sizes[p["tex"]] = _texture_size(p)
    # Demo choice: floors favour tiles and mosaics, every other surface draws any of the five families.
    families = [None if i not in sizes else str(rng.choice(["brick", "mosaic", "blotch"] if i == 0 else list(TEXTURES)))
                for i in range(n_tex)]  # None: an unused index (a room without a notch)
    textures = [_texture(rng, families[i], *sizes[i]) if i in sizes else None for i in range(n_tex)]
    c2w = _camera_path(rng, num_frames, scene["segment"], scene["look_yaw"])
    lights = _lights(rng, num_frames, scene["dims"])
    f = size * rng.uniform(0.7, 0.95)
    cx, cy = size / 2 + size * rng.uniform(-0.02, 0.02, 2)
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])

    def frames():  # rendered one at a time as write_scene stores them
        for k in range(num_frames):
            rgb, depth, _ = render(prims, textures, K, c2w[k], (size, size), lights[k])
            yield (rgb * 255).round().astype(np.uint8), depth

    record = {"version": ROOMS_VERSION, "seed": seed, "path": scene["path"], "room": list(scene["dims"]),
              "notch": scene["notch"], "objects": scene["objects"], "textures": families, "primitives": prims,
              "light": [dict(pos=l["pos"].tolist(), intensity=float(l["intensity"]), exposure=float(l["exposure"]),
                             tint=l["tint"].tolist()) for l in lights]}
    return write_scene(out_dir, frames(), K, c2w, (size, size), {"rooms": record})


def make_rooms(root, n_scenes, seed=20000, num_frames=48, size=448):
    """Write scenes root/scene_0000 ... with seeds seed, seed + 1, ...; complete scenes rendered by this
    version with the same seed, size and frame count are kept, others (re)rendered."""
    return make_scenes(root, rooms_scene, n_scenes, seed, num_frames, size, "rooms", ROOMS_VERSION,
                       f"validation rooms in {root}")


def ensure_rooms(root="data/rooms", n=2, size=448, frames=48):
    """The second held-out set: n rooms scenes (seeds 20000...) under root, made if absent or stale."""
    return make_rooms(root, n, 20_000, frames, size)


def main(argv=None):
    generator_main(argv, "Render validation scenes from a second, independent generator (L-shaped rooms, spheres, "
                   "cylinders, ramps, five texture families, lighting changes, translating cameras) in DL3DV layout "
                   "(images/, images_2/, depths/, transforms.json).", make_rooms, scenes=2, frames=48, seed=20_000)


if __name__ == "__main__":
    main()
