"""synth.py: exact depth for every shape (pixels unprojected from depths/*.npy lie on the scene's surfaces;
tracks land where a ray cast through them hits), camera paths that keep clear of objects and walls and move
as much as an orbit does, frames not dominated by one surface, texture families, and lighting that changes
between frames but keeps a surface recognisable."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import data
from scenes import layout, synth

DEFAULT_SEEDS = list(range(24)) + [10_000 + k for k in range(8)]  # ensure_synthetic's train and val scenes


def _objects(meta):
    s = meta["synthetic"]
    room = ("room", np.array([0, 0, s["room"][2]]), np.array(s["room"]), 0.0, 0)  # floor at z = 0
    return [room] + [(o["kind"], np.array(o["centre"]), np.array(o["half"]), o["yaw"], o["texture"])
                     for o in s["objects"]]


def _surface_distance(objects, x):
    """|signed distance| (N, len(objects)) of world points x (N, 3) to each object's surface."""
    out = []
    for kind, centre, half, yaw, _ in objects:
        p = (x - centre) @ synth._rot_z(yaw)  # (N, 3) in the object's frame
        if kind in ("room", "box"):
            out.append(np.abs(np.abs(p) - half).min(-1) * (np.abs(p) <= half + 1e-4).all(-1)
                       + 1e9 * ~(np.abs(p) <= half + 1e-4).all(-1))
        elif kind == "cylinder":
            radial = np.linalg.norm(p[:, :2], axis=-1)
            out.append(np.maximum(radial - half[0], np.abs(p[:, 2]) - half[2]))
        else:
            out.append(np.linalg.norm(p, axis=-1) - half[0])
    return np.abs(np.stack(out, -1))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Small scenes (96 px, 6 frames) whose objects include boxes, cylinders and spheres."""
    root = tmp_path_factory.mktemp("synth")
    synth.make_synthetic(root, 3, seed=1, num_frames=6, size=96)
    return [root / f"scene_{k:04d}" for k in range(3)]


def test_depth_lies_on_the_surfaces(scenes):
    """Every pixel unprojected with its depth and the pose read back by data.load_scene lies on a surface
    (within 1 mm), and each shape kind is seen."""
    seen = set()
    for path in scenes:
        meta = json.loads((path / "transforms.json").read_text())
        objects = _objects(meta)
        scene = data.load_scene(path)
        for i in (0, 5):
            depth = scene.depth(i)
            assert (depth > 0).all() and np.isfinite(depth).all()
            v, u = np.mgrid[:96, :96].reshape(2, -1) + 0.5
            x = data.cam_to_world(data.unproject(np.stack([u, v], -1), depth.reshape(-1), scene.K[i]), scene.c2w[i])  # (P, 3)
            dist = _surface_distance(objects, x)
            assert dist.min(-1).max() < 1e-3
            seen |= {objects[b][0] for b in np.unique(dist.argmin(-1))}
    assert seen == {"room", "box", "cylinder", "sphere"}


def test_reprojected_pixels_land_where_rays_hit(scenes):
    """Pixel centres of frame 0 unprojected with their depth and projected into frame 5 (data's own
    projection functions, poses as data.load_scene reads them) land where a ray cast through that sub-pixel
    position hits at exactly the projected depth, unless something nearer occludes them; and the rendered
    depth of the pixel they land in agrees within data's occlusion tolerance for most of them."""
    for path in scenes:
        objects = _objects(json.loads((path / "transforms.json").read_text()))
        scene = data.load_scene(path)
        a, b = 0, 5
        uv_a = np.stack(np.meshgrid(np.arange(4, 96, 8), np.arange(4, 96, 8)), -1).reshape(-1, 2) + 0.5  # (144, 2)
        z_a = scene.depth(a)[uv_a[:, 1].astype(int), uv_a[:, 0].astype(int)]
        x = data.cam_to_world(data.unproject(uv_a, z_a, scene.K[a]), scene.c2w[a])  # (144, 3)
        uv_b, z_b = data.project(data.world_to_cam(x, scene.c2w[b]), scene.K[b])
        inside = (uv_b >= 0).all(-1) & (uv_b < 96).all(-1)
        assert inside.mean() > 0.5
        cast = []
        for u, v in uv_b[inside]:
            K = scene.K[b].copy()
            K[:2, 2] -= np.array([u, v]) - 0.5  # a 1 x 1 image whose pixel centre is (u, v)
            cast.append(synth._cast(objects, K, scene.c2w[b], (1, 1))[0][0, 0])
        cast, z = np.array(cast), z_b[inside]
        assert (cast < z * (1 + 1e-5)).all()  # nothing is seen behind a surface point
        assert (np.abs(cast - z) < 1e-5 * z).mean() > 0.8  # most stay in view, at exactly their depth
        rendered = scene.depth(b)[uv_b[inside, 1].astype(int), uv_b[inside, 0].astype(int)]
        assert (np.abs(rendered - z) < data.REL_TOL * z).mean() > 0.8


def test_default_camera_paths_keep_clear_and_move_like_an_orbit():
    kinds, shares = set(), []
    for seed in DEFAULT_SEEDS + list(range(100, 110)):
        path = synth.PATHS[seed % 3]
        objects, c2w = synth._scene_geometry(np.random.default_rng(seed), 48, path)
        kinds.add(path)
        eye = c2w[:, :3, 3]
        room = objects[0][2]
        assert (np.abs(eye[:, :2]) < room[:2] - synth.CLEARANCE).all() and (eye[:, 2] > 1).all()
        for _, centre, half, _, _ in objects[1:]:  # never inside (nor within 0.6 m of) an object
            assert (np.linalg.norm(eye[:, :2] - centre[:2], axis=-1) > np.linalg.norm(half[:2]) + synth.CLEARANCE).all()
        step = np.linalg.norm(np.diff(eye, axis=0), axis=-1)
        assert (step > 0.015).all() and (step < 0.05).all()  # an orbit moves ~3 cm per frame
        relative = c2w[1:, :3, :3].transpose(0, 2, 1) @ c2w[:-1, :3, :3]  # (47, 3, 3) frame-to-frame rotations
        turn = np.arccos(np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1, 1))
        assert np.degrees(turn).max() < 2.5  # and turns ~0.5-0.8° (the wandering target adds a little)
        np.testing.assert_allclose(c2w[:, :3, :3] @ c2w[:, :3, :3].transpose(0, 2, 1), np.broadcast_to(np.eye(3), (48, 3, 3)),
                                   atol=1e-9)
        K = np.array([[28.8, 0, 16], [0, 28.8, 16], [0, 0, 1]])
        for k in range(48):
            _, obj, face, _ = synth._cast(objects, K, c2w[k], (32, 32))
            shares.append(np.bincount((6 * obj + face).ravel()).max() / obj.size)
            assert len(np.unique(obj)) >= 2  # the room and at least one object in view (two every 4th frame)
    assert kinds == {"orbit", "arc", "dolly"}
    assert max(shares) < 0.7  # no frame is one flat surface


def test_texture_families_are_distinct_locally_and_deterministic():
    """Every family gives a textured, locally distinctive surface: a 28 x 28 texel patch (about one token at
    2.5 m) differs from the patches one and two periods away, so periodic families are not aliased."""
    for family in range(4):
        t = synth._texture(np.random.default_rng(family), 160, 200, family)
        np.testing.assert_array_equal(t, synth._texture(np.random.default_rng(family), 160, 200, family))
        assert t.shape == (160, 200, 3) and t.dtype == np.float32 and 0 <= t.min() and t.max() <= 1
        assert t.std() > 0.1
        patches = t[:140, :196].reshape(5, 28, 7, 28, 3).transpose(0, 2, 1, 3, 4).reshape(35, -1)  # (35, 28·28·3)
        gaps = np.abs(patches[:, None] - patches[None]).mean(-1)[~np.eye(35, dtype=bool)]
        assert gaps.min() > 0.03, family  # no two of 35 patches look the same


def test_lighting_changes_but_tracks_keep_their_colour(scenes):
    meta = json.loads((scenes[0] / "transforms.json").read_text())
    light, ambient, gain, gamma, cast = synth._lighting(np.random.default_rng(0), 48)
    assert np.ptp(gain) > 0.05 and np.ptp(gamma) > 0.03 and np.ptp(light[:, 0]) > 0.1
    assert np.abs(np.diff(gain)).max() < 0.01 and 0.5 <= ambient <= 0.8
    assert meta["synthetic"]["version"] == synth.SYNTH_VERSION
    scene = data.load_scene(scenes[1], (96, 96))
    s = data.make_sample(scene, np.random.default_rng(1), 6, lattices=(24,))
    a, diffs, shuffled = s["anchor"], [], []
    for f in range(6):
        vis = s["visible"][f] & s["visible"][a]
        p, q = s["tracks"][f][vis].astype(int), s["tracks"][a][vis].astype(int)
        c_f, c_a = s["frames"][f][p[:, 1], p[:, 0]].astype(float), s["frames"][a][q[:, 1], q[:, 0]].astype(float)
        diffs.append(np.abs(c_f - c_a).mean())
        shuffled.append(np.abs(c_f - np.roll(c_a, 5, 0)).mean())
    assert np.mean(diffs) < 0.35 * np.mean(shuffled)


def test_scenes_rendered_in_parallel_match_one_rendered_alone(scenes, tmp_path):
    """make_synthetic renders scenes in a thread pool: scene 1 (seed 2) equals the same seed rendered here,
    file for file; a worker's error reaches the caller."""
    alone = synth.synth_scene(tmp_path / "alone", 2, 6, 96)
    files = sorted(p.relative_to(alone) for p in alone.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(scenes[1]) for p in scenes[1].rglob("*") if p.is_file())
    for f in files:
        assert (alone / f).read_bytes() == (scenes[1] / f).read_bytes(), f
    blocked = [tmp_path / "file_a", tmp_path / "file_b"]
    for b in blocked:
        b.write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        layout.render_scenes(synth.synth_scene, [(b, k, 2, 32) for k, b in enumerate(blocked)], "blocked")


def scene_digest(root):
    """sha256 over a scene folder's files: each relative path, a NUL, then its bytes, in sorted path order."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("seed, digest", [(0, "37fac56b46b773234fcfc41e853c6f8a15c50431cf2d0219051f9d9ec2578acc"),
                                          (2, "3f53f382035d051de859837b8e100eb9840471e80c54b2cc17a44b100a91c837")])
def test_scene_files_match_the_recorded_bytes(tmp_path, seed, digest):
    """Every file of a 3-frame 40 px scene (an orbit and a dolly) is the bytes synth.py wrote before its file
    writing moved to scenes/layout.py. Recorded with numpy 2.4, Pillow 13.0 and zlib 1.2.13; a renderer change
    bumps SYNTH_VERSION and records these again."""
    assert scene_digest(synth.synth_scene(tmp_path / "s", seed, num_frames=3, size=40)) == digest


def test_write_scene_layout_and_transforms_last(tmp_path):
    """write_scene: images/ and images_2/ (half size) PNGs, depths/<stem>.npy as given, transforms.json with
    the OpenGL poses (camera y and z negated), colmap_im_id 1..F and the extra record; no .tmp left. A frame
    that fails to render leaves no transforms.json, so an incomplete scene is never taken for a complete one."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    depth = rng.uniform(1, 5, (2, 8, 12)).astype(np.float32)
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[1, :3, 3] = [0.5, -0.25, 2.0]
    K = np.array([[10.0, 0, 6], [0, 11, 4], [0, 0, 1]])
    out = layout.write_scene(tmp_path / "s", zip(rgb, depth), K, c2w, (8, 12), {"mine": {"seed": 3}})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "depths", "depths/frame_00001.npy", "depths/frame_00002.npy", "images", "images/frame_00001.png",
        "images/frame_00002.png", "images_2", "images_2/frame_00001.png", "images_2/frame_00002.png",
        "transforms.json"]
    np.testing.assert_array_equal(np.asarray(data.Image.open(out / "images" / "frame_00002.png")), rgb[1])
    assert data.Image.open(out / "images_2" / "frame_00001.png").size == (6, 4)
    np.testing.assert_array_equal(np.load(out / "depths" / "frame_00002.npy"), depth[1])
    meta = json.loads((out / "transforms.json").read_text())
    assert (meta["camera_model"], meta["w"], meta["h"], meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"]) == \
        ("OPENCV", 12, 8, 10.0, 11.0, 6.0, 4.0)
    assert [meta[k] for k in ("k1", "k2", "p1", "p2")] == [0.0] * 4 and meta["mine"] == {"seed": 3}
    assert [f["file_path"] for f in meta["frames"]] == ["images/frame_00001.png", "images/frame_00002.png"]
    assert [f["colmap_im_id"] for f in meta["frames"]] == [1, 2]
    gl = np.array(meta["frames"][1]["transform_matrix"])
    np.testing.assert_array_equal(gl[:, [0, 3]], c2w[1][:, [0, 3]])
    np.testing.assert_array_equal(gl[:3, 1:3], -c2w[1][:3, 1:3])
    scene = data.load_scene(out)
    np.testing.assert_allclose(scene.c2w, c2w)
    np.testing.assert_allclose(scene.K[0], K)

    def failing():
        yield rgb[0], depth[0]
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        layout.write_scene(tmp_path / "broken", failing(), K, c2w, (8, 12))
    assert (tmp_path / "broken" / "images" / "frame_00001.png").is_file()
    assert not (tmp_path / "broken" / "transforms.json").exists()
