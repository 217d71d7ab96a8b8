"""rooms.py (the validation-only scene generator) against exact geometry: its scenes load through
data.load_scene, make_sample's tracks land on the same surface point in every frame, depth equals the
analytic ray-sphere intersection and lies on every primitive's surface, rendering is deterministic, and
the layouts differ from synth.py's (translating cameras, L-shaped rooms, curved and slanted shapes)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import data
from scenes import rooms

SMALL = dict(num_frames=12, size=112)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rooms")
    rooms.make_rooms(root, 1, seed=20000, **SMALL)
    return root / "scene_0000"


def light():
    return dict(pos=np.array([0.0, -1.0, 1.0]), intensity=1.0, exposure=1.0, tint=np.ones(3))


def exact_world_points(prims, uv, K, c2w):
    """World points where rays through pixels uv (N, 2) of the camera (K, c2w OpenCV) first meet the scene."""
    rays = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))])
    d = c2w[:3, :3] @ rays  # (3, N)
    t, _ = rooms.cast(prims, c2w[:3, 3], d)
    return (c2w[:3, 3, None] + t * d).T  # (N, 3)


def edge_contrast(image, depth):
    """Mean image gradient across depth edges (> 10 % jumps between neighbours) over the mean elsewhere."""
    grey, edge, grad = image.astype(float).mean(-1), np.zeros(depth.shape, bool), np.zeros(depth.shape)
    for axis in (0, 1):
        jump = np.abs(np.diff(depth, axis=axis)) / np.delete(depth, 0, axis) > 0.1
        step = np.abs(np.diff(grey, axis=axis))
        if axis == 0:
            edge[1:] |= jump
            grad[1:] += step
        else:
            edge[:, 1:] |= jump
            grad[:, 1:] += step
    return grad[edge].mean() / grad[~edge].mean()


def test_scene_loads_with_the_dl3dv_reader(scene_dir):
    meta = json.loads((scene_dir / "transforms.json").read_text())
    assert meta["rooms"]["version"] == rooms.ROOMS_VERSION and meta["rooms"]["seed"] == 20000
    scene = data.load_scene(scene_dir)
    assert scene.source == "depths" and len(scene) == 12 and scene.size == (112, 112)
    assert np.allclose(scene.K[0], [[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1]])
    assert scene.image(0).shape == (112, 112, 3) and scene.image(0).std() > 10  # textured, not flat
    depth = np.stack([scene.depth(i) for i in range(len(scene))])
    assert depth.dtype == np.float32 and (depth > 0).all()  # rooms are closed: every pixel has depth
    assert depth.max() < np.hypot(*meta["rooms"]["room"][:2]) + 1  # nothing beyond the room's diagonal
    # image edges sit on depth edges (occlusion boundaries): the files are not flipped against each other
    edge_ratio = lambda flip: np.mean([edge_contrast(flip(scene.image(i)), d) for i, d in enumerate(depth)])
    assert edge_ratio(lambda im: im) > 1.4 * max(edge_ratio(np.flipud), edge_ratio(np.fliplr))
    half = data.load_scene(scene_dir, (56, 56))
    assert half.image_files[0].parent.name == "images_2" and half.image(0).shape == (56, 56, 3)


def test_tracks_land_on_the_same_surface_point(scene_dir):
    """make_sample's tracks, checked against the stored primitives: the anchor's point (from its depth map)
    and the exact ray through the track in every other frame meet the scene at the same world point."""
    scene = data.load_scene(scene_dir)
    prims = json.loads((scene_dir / "transforms.json").read_text())["rooms"]["primitives"]
    # 16 x 16 cells of 7 px: queries at pixel centres, where the anchor's depth map is exact
    s = data.make_sample(scene, np.random.default_rng(1), 6, lattices=(16,), anchor=3)
    a, K, c2w = s["anchor"], s["K"].astype(np.float64), s["c2w"].astype(np.float64)
    uv_a = s["tracks"][a].astype(np.float64)
    assert np.allclose(uv_a % 1, 0.5)
    z_a = data.lookup_depth(s["depth"][a][None], uv_a[None])[0]
    X_a = data.cam_to_world(data.unproject(uv_a, z_a, K[a]), c2w[a])  # (N, 3) from the anchor's depth map
    assert np.abs(X_a - exact_world_points(prims, uv_a, K[a], c2w[a])).max() < 1e-4
    errors, colour, shuffled = [], [], []
    rng = np.random.default_rng(0)
    for f in range(len(s["frames"])):
        vis = s["visible"][f]
        if f == a or not vis.any():
            continue
        errors.append(np.linalg.norm(exact_world_points(prims, s["tracks"][f][vis], K[f], c2w[f]) - X_a[vis], axis=1))
        u, v = np.floor(s["tracks"][f][vis]).astype(int).T
        here = s["frames"][f][v, u].astype(float)  # (n, 3)
        there = s["frames"][a][np.floor(uv_a[vis, 1]).astype(int), np.floor(uv_a[vis, 0]).astype(int)].astype(float)
        colour.append(np.abs(here - there).mean(1))
        shuffled.append(np.abs(here - there[rng.permutation(len(there))]).mean(1))
    errors = np.concatenate(errors)
    assert len(errors) > 0.3 * s["visible"].size  # most points stay in view over 6 of 12 frames
    assert np.median(errors) < 1e-3 and (errors < 0.01).mean() > 0.98, np.percentile(errors, [50, 98, 100])
    # the images show the same surface at both ends (up to lighting changes and sub-pixel texture shifts)
    assert np.median(np.concatenate(colour)) < 0.5 * np.median(np.concatenate(shuffled))


def test_depth_is_the_analytic_sphere_intersection():
    """A sphere in front of a wall, camera at the origin (OpenCV axes = world axes): depth = the smaller
    root of |t·d - c|² = r² with d = K⁻¹[u, v, 1]ᵀ, solved here independently of rooms.py."""
    c, r = np.array([0.3, -0.2, 3.0]), 0.8
    prims = [dict(kind="sphere", centre=c.tolist(), radius=r, tex=0),
             rooms._quad([-50, -50, 10], [100, 0, 0], [0, 100, 0], 1)]
    textures = [np.full((8, 8, 3), 0.5, np.float32), np.full((8, 8, 3), 0.3, np.float32)]  # lookups clamp
    K = np.array([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    _, depth, which = rooms.render(prims, textures, K, np.eye(4), (64, 64), light())
    v, u = np.mgrid[:64, :64] + 0.5
    d = np.stack([(u - 32) / 60, (v - 32) / 60, np.ones_like(u)], -1)  # (H, W, 3)
    A, B, C = (d * d).sum(-1), -2 * d @ c, c @ c - r * r
    disc = B * B - 4 * A * C
    hit = disc >= 0
    t = (-B - np.sqrt(np.where(hit, disc, 0))) / (2 * A)
    assert hit.sum() > 300 and (~hit).sum() > 300
    assert ((which == 0) == hit).all()
    assert np.abs(depth[hit] - t[hit]).max() < 1e-5 * t[hit].max()
    assert np.allclose(depth[~hit], 10.0, rtol=1e-6)


def surface_distance(prim, X):
    """Distance of points X (N, 3) from prim's surface, and whether they lie within its bounds."""
    k = prim["kind"]
    if k in ("quad", "tri"):
        p0, e1, e2 = (np.array(prim[key]) for key in ("p0", "e1", "e2"))
        n = np.cross(e1, e2) / np.linalg.norm(np.cross(e1, e2))
        ab = np.linalg.lstsq(np.stack([e1, e2], 1), (X - p0).T, rcond=None)[0]  # (2, N)
        inside = (ab > -1e-6).all(0) & ((ab.sum(0) <= 1 + 1e-6) if k == "tri" else (ab < 1 + 1e-6).all(0))
        return np.abs((X - p0) @ n), inside
    c, rad = np.array(prim["centre"]), prim["radius"]
    if k == "sphere":
        return np.abs(np.linalg.norm(X - c, axis=1) - rad), np.ones(len(X), bool)
    if k == "disk":
        return np.abs(X[:, 2] - c[2]), np.linalg.norm(X[:, :2] - c[:2], axis=1) <= rad + 1e-6
    assert k == "cylinder"
    return (np.abs(np.linalg.norm(X[:, :2] - c[:2], axis=1) - rad),
            (X[:, 2] >= c[2] - 1e-6) & (X[:, 2] <= c[2] + prim["height"] + 1e-6))


def test_depth_lies_on_every_primitive():
    """Unprojected float32 depth of every pixel lies on the surface of the primitive it shows (< 0.1 mm),
    within its bounds, over generated layouts: planes, triangles, spheres, cylinders and disks."""
    seen = set()
    K = np.array([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]])
    for seed in range(20000, 20006):
        rng = np.random.default_rng(seed)
        scene = rooms.layout(rng)
        prims = scene["prims"]
        textures = {p["tex"]: np.full((8, 8, 3), 0.5, np.float32) for p in prims}
        c2w = rooms._camera_path(rng, 8, scene["segment"], scene["look_yaw"])
        for k in (0, 7):
            _, depth, which = rooms.render(prims, textures, K, c2w[k], (64, 64), light())
            v, u = np.mgrid[:64, :64].reshape(2, -1) + 0.5
            X = data.cam_to_world(data.unproject(np.stack([u, v], -1), depth.reshape(-1).astype(np.float64), K), c2w[k])
            for i in np.unique(which):
                dist, inside = surface_distance(prims[i], X[which.reshape(-1) == i])
                assert dist.max() < 1e-4 and inside.all(), (prims[i]["kind"], dist.max())
                seen.add(prims[i]["kind"])
    assert {"quad", "tri", "sphere", "cylinder", "disk"} <= seen, seen


def test_layouts_differ_from_synth():
    """Over ten seeds: L-shaped and plain rooms, every object kind, every camera path kind, and cameras that
    translate (the synthetic training scenes orbit a fixed centre)."""
    kinds, paths, notches = set(), set(), set()
    for seed in range(20000, 20010):
        rng = np.random.default_rng(seed)
        scene = rooms.layout(rng)
        kinds |= set(scene["objects"])
        paths.add(scene["path"])
        notches.add(scene["notch"] is not None)
        c2w = rooms._camera_path(rng, 12, scene["segment"], scene["look_yaw"])
        assert np.linalg.norm(c2w[-1, :3, 3] - c2w[0, :3, 3]) > 0.1
        assert all(np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3)) and np.linalg.det(m[:3, :3]) > 0 for m in c2w)
    assert kinds == {"sphere", "drum", "pillar", "ramp", "panel"} and paths == {"walk", "strafe", "crab"}
    assert notches == {True, False}


def test_deterministic_kept_and_rerendered_when_stale(tmp_path):
    one, two = rooms.make_rooms(tmp_path / "a", 1, 7, 3, 32), rooms.make_rooms(tmp_path / "b", 1, 7, 3, 32)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 10 and files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    other = rooms.make_rooms(tmp_path / "c", 1, 8, 3, 32)
    assert (other / files[0]).read_bytes() != (one / files[0]).read_bytes()
    tf = one / "scene_0000" / "transforms.json"
    stamp = tf.stat().st_mtime_ns
    rooms.make_rooms(one, 1, 7, 3, 32)  # complete and matching: kept
    assert tf.stat().st_mtime_ns == stamp
    meta = json.loads(tf.read_text())
    meta["rooms"]["version"] = -1
    tf.write_text(json.dumps(meta))
    rooms.make_rooms(one, 1, 7, 3, 32)  # stale: re-rendered
    assert json.loads(tf.read_text())["rooms"]["version"] == rooms.ROOMS_VERSION
    assert tf.read_bytes() == (two / "scene_0000" / "transforms.json").read_bytes()


def test_scene_files_match_the_recorded_bytes(tmp_path):
    """Every file of a 3-frame 40 px scene (seed 20000) is the bytes rooms.py wrote before its file writing
    moved to scenes/layout.py: sha256 over each relative path, a NUL and its bytes, in sorted path order.
    Recorded with numpy 2.4, Pillow 13.0 and zlib 1.2.13; a renderer change bumps ROOMS_VERSION and records
    this again."""
    root, h = rooms.rooms_scene(tmp_path / "s", 20000, num_frames=3, size=40), hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    assert h.hexdigest() == "5a7f3dd0d9726a761c687243b773c79166c81fdfc78d17739c00f1b53bf9840c"


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        rooms.main(["--help"])
    assert e.value.code == 0 and "--scenes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        rooms.main(["--out", str(tmp_path), "--scenes", "0"])
    assert e.value.code == 2 and "--scenes must be positive" in capsys.readouterr().err
    rooms.main(["--out", str(tmp_path), "--scenes", "1", "--frames", "2", "--size", "16"])
    assert len(data.load_scene(tmp_path / "scene_0000")) == 2
