"""data.py against geometry worked by hand: closed-form plane tracks, round trips, occlusion, the
OpenGL -> OpenCV conversion, COLMAP's depth format, bad inputs, the sample contract, synthetic scenes."""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scenes import colmap
import data
import analytic
from scenes import synth

ROOT = Path(__file__).resolve().parents[1]




def pose(R, t):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, t
    return m


def write_scene(root, c2w_cv, K, size, depths, image_dir="images"):
    """A scene on disk in DL3DV layout; poses written as nerfstudio/OpenGL (columns y, z negated by hand)."""
    root = Path(root)
    (root / image_dir).mkdir(parents=True)
    (root / "depths").mkdir()
    H, W = size
    frames = []
    for k, (m, d) in enumerate(zip(c2w_cv, depths)):
        name = f"frame_{k + 1:05d}"
        Image.fromarray(np.full((H, W, 3), 20 * k % 255, np.uint8)).save(root / image_dir / f"{name}.png")
        np.save(root / "depths" / f"{name}.npy", np.asarray(d, np.float32))
        gl = np.array(m, float)
        gl[:3, 1:3] *= -1
        frames.append({"file_path": f"images/{name}.png", "transform_matrix": gl.tolist()})
    meta = {"camera_model": "OPENCV", "w": W, "h": H, "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2],
            "cy": K[1, 2], "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def flat_scene(tmp_path, n=4, size=(16, 20), name="scene"):
    K = np.array([[20.0, 0, 10], [0, 20.0, 8], [0, 0, 1]])
    c2w = [pose(np.eye(3), [0.1 * k, 0, 0]) for k in range(n)]
    return write_scene(tmp_path / name, c2w, K, size, [np.full(size, 5.0)] * n)


# ----------------------------------------------------------------------------- geometry

def ray_depth(K, c2w, size, planes):
    """z-depth of the nearest plane n·X = c along each pixel-centre ray: (H, W), and the plane id hit."""
    H, W = size
    v, u = np.mgrid[:H, :W] + 0.5
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # camera z = 1
    d = rays @ c2w[:3, :3].T
    lam = np.stack([(c - n @ c2w[:3, 3]) / (d @ n) for n, c in planes])  # (P, H, W); lam = z-depth
    lam[lam <= 0] = np.inf
    return lam.min(0), lam.argmin(0)


def test_plane_tracks_match_homographies():
    """A floor and a back wall; every track is p_b ~ K_b (R + t nᵀ/c) K_a⁻¹ p_a of the plane it lies on."""
    rng = np.random.default_rng(0)
    size = (60, 80)  # H != W, fx != fy, off-centre principal point: transpositions and mixed axes fail
    K = np.array([[70.0, 0, 43.0], [0, 64.0, 27.5], [0, 0, 1]])
    planes = [(np.array([0.0, 0, 1]), 8.0), (np.array([0.0, 1, 0]), 1.5)]  # wall z = 8, floor y = 1.5 (y down)
    c2w = np.stack([pose(analytic.rotation(rng, 8), rng.uniform(-0.4, 0.4, 3)) for _ in range(5)])
    depth = np.stack([ray_depth(K, m, size, planes)[0] for m in c2w])
    hit = ray_depth(K, c2w[2], size, planes)[1]
    j, i = np.mgrid[1:60:3, 2:80:3].reshape(2, -1)
    query = np.stack([i + 0.5, j + 0.5], -1)  # pixel centres, where the depth map is exact
    Ks = np.repeat(K[None], 5, 0)
    tracks, track_depth, visible = data.track(query, 2, depth, Ks, c2w, margin=2.0)
    for b in range(5):
        expect = np.zeros_like(query)
        z_expect = np.zeros(len(query))
        for p, (n, c) in enumerate(planes):
            Ra, ta, Rb, tb = c2w[2, :3, :3], c2w[2, :3, 3], c2w[b, :3, :3], c2w[b, :3, 3]
            n_a, c_a = Ra.T @ n, c - n @ ta  # plane in the anchor camera
            R, t = Rb.T @ Ra, Rb.T @ (ta - tb)  # anchor camera -> target camera
            Hmg = K @ (R + np.outer(t, n_a) / c_a) @ np.linalg.inv(K)
            ph = np.c_[query, np.ones(len(query))] @ Hmg.T
            on = hit[j, i] == p
            expect[on] = ph[on, :2] / ph[on, 2:]
            X_a = np.c_[query, np.ones(len(query))] @ np.linalg.inv(K).T * depth[2, j, i][:, None]
            z_expect[on] = (X_a @ R.T + t)[on, 2]
        inside = (expect >= 2).all(1) & (expect[:, 0] <= 78) & (expect[:, 1] <= 58)
        np.testing.assert_allclose(tracks[b][inside], expect[inside], atol=1e-3)
        np.testing.assert_allclose(track_depth[b][inside], z_expect[inside], rtol=1e-5)
        assert (visible[b] == (inside | (b == 2))).all()  # concave corner: nothing occluded; anchor row all valid
        assert inside.mean() > 0.6
    np.testing.assert_array_equal(tracks[2], query.astype(np.float32))


def test_point_behind_an_object_is_invisible():
    """Wall z = 10, occluder square at z = 5 over x in [0.5, 1.5], |y| <= 0.5. From the anchor at the
    origin the wall point (0, 0, 10) is in view; from x = 2 the ray to it crosses the occluder."""
    K = np.array([[50.0, 0, 32.5], [0, 50.0, 32.5], [0, 0, 1]])
    c2w = np.stack([pose(np.eye(3), [0, 0, 0]), pose(np.eye(3), [2, 0, 0]), pose(np.diag([-1.0, 1, -1]), [0, 0, 0])])
    depth = []
    for m in c2w:
        v, u = np.mgrid[:64, :64] + 0.5
        d = np.stack([(u - 32.5) / 50, (v - 32.5) / 50, np.ones_like(u)], -1) @ m[:3, :3].T
        wall, near = (10 - m[2, 3]) / d[..., 2], (5 - m[2, 3]) / d[..., 2]
        x, y = m[0, 3] + near * d[..., 0], near * d[..., 1]
        occluded = (near > 0) & (x >= 0.5) & (x <= 1.5) & (abs(y) <= 0.5)
        z = np.where(occluded, near, wall)  # ray parameter = camera z, as the camera ray has z = 1
        depth.append(np.where(z > 0, z, 0))  # the third camera looks away: no depth there
    depth = np.stack(depth)
    query = np.array([[32.5, 32.5], [22.5, 32.5]])  # rays to (0, 0, 10) and (-2, 0, 10)
    tracks, track_depth, visible = data.track(query, 0, depth, np.repeat(K[None], 3, 0), c2w)
    assert visible[0].all()
    assert not visible[1, 0] and visible[1, 1]  # hidden behind the square / in plain view
    np.testing.assert_allclose(tracks[1, 0], [32.5 - 50 * 2 / 10, 32.5], atol=1e-4)  # still projected
    np.testing.assert_allclose(track_depth[1], [10, 10], rtol=1e-6)
    assert depth[1, 32, 22] == pytest.approx(5)  # what hides it
    assert not visible[2].any() and (tracks[2] == -1).all() and (track_depth[2] == 0).all()  # behind camera 3


@pytest.mark.parametrize("dist", [None, np.array([-0.12, 0.03, 1e-3, -5e-4])])
def test_unproject_project_round_trip(dist):
    rng = np.random.default_rng(1)
    K = np.array([[310.0, 0, 150.3], [0, 290.0, 121.7], [0, 0, 1]])
    c2w = pose(analytic.rotation(rng, 180), rng.normal(size=3))
    uv, z = rng.uniform(0, 300, (50, 2)), rng.uniform(0.5, 20, 50)
    X_w = data.cam_to_world(data.unproject(uv, z, K, dist), c2w)
    uv2, z2 = data.project(data.world_to_cam(X_w, c2w), K, dist)
    np.testing.assert_allclose(uv2, uv, atol=1e-6)
    np.testing.assert_allclose(z2, z, rtol=1e-12)
    X = data.unproject(np.array([[150.3 + 310, 121.7]]), np.array([2.0]), K)  # one focal length right
    np.testing.assert_allclose(X, [[2.0, 0, 2.0]])


def test_distortion_matches_the_opencv_formula():
    # r² = 0.05, radial = 1 + 0.1·0.05 + 0.01·0.0025 = 1.005025
    # x' = 0.1·1.005025 + 2·0.001·0.1·0.2 + 0.002·(0.05 + 0.02) = 0.1006825
    # y' = 0.2·1.005025 + 0.001·(0.05 + 0.08) + 2·0.002·0.1·0.2 = 0.201215
    dist = np.array([0.1, 0.01, 0.001, 0.002])
    out = data.distort(np.array([0.1, 0.2]), dist)
    np.testing.assert_allclose(out, [0.1006825, 0.201215], atol=1e-12)
    np.testing.assert_allclose(data.undistort(out, dist), [0.1, 0.2], atol=1e-10)


def test_visibility_thresholds():
    """Inside by the margin, in front, and |z - D| <= 0.05 min(z, D): 1.049 passes, 1.052 fails
    (it would pass with 0.05 max(z, D) = 0.0526)."""
    uv = np.array([[4.0, 4.0], [3.9, 10], [10, 16.1], [10, 10], [10, 10], [10, 10], [10, 10]])
    z = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0])
    d = np.array([1.0, 1.0, 1.0, 1.049, 1.052, -1.0, 0.0])
    np.testing.assert_array_equal(data.visibility(uv, z, d, (20, 30), margin=4),
                                  [True, False, False, True, False, False, False])


def test_opengl_to_opencv():
    gl = np.eye(4)  # nerfstudio camera at the origin looking down world -z, y up
    cv = data.gl_to_cv(gl)
    np.testing.assert_array_equal(cv[:3, :3], np.diag([1.0, -1, -1]))
    np.testing.assert_array_equal(data.gl_to_cv(cv), gl)
    K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    uv, z = data.project(data.world_to_cam(np.array([[0.0, 1, -2]]), cv), K)  # in front, above the axis
    assert z[0] == pytest.approx(2) and uv[0, 1] < 50  # OpenCV: positive depth, above = smaller v


def test_a_frame_of_another_size_is_named_with_the_fix(tmp_path):
    root = flat_scene(tmp_path)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "images" / "frame_00003.png")  # half size
    scene = data.load_scene(root)
    with pytest.raises(ValueError, match=r"frame_00003.png: image is 8x10, the scene's frames are 16x20 .as its first "
                                         r"listed frame.; all frames of a scene must have one size: extract this one"):
        scene.image(2)


def test_frames_of_any_pixel_format_read_as_8_bit_rgb(tmp_path):
    """16-bit grey PNGs are scaled to 8 bits (PIL alone clips them at 255: white frames); palette, RGBA and
    grey frames give the same RGB; the same holds for instruction-data frame folders."""
    root = flat_scene(tmp_path)  # frame k is grey 20 k
    grey = np.full((16, 20), 40, np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(root / "images" / "frame_00003.png")
    Image.fromarray(np.full((16, 20, 4), 60, np.uint8)).save(root / "images" / "frame_00004.png")  # RGBA
    Image.fromarray(np.full((16, 20), 20, np.uint8)).convert("P").save(root / "images" / "frame_00002.png")
    assert Image.open(root / "images" / "frame_00003.png").mode.startswith("I")
    scene = data.load_scene(root)
    for k in range(4):
        np.testing.assert_array_equal(scene.image(k), np.full((16, 20, 3), 20 * k, np.uint8))
    np.testing.assert_array_equal(data.read_clip(root / "images", 4)[2], np.full((16, 20, 3), 40, np.uint8))


def test_load_scene_converts_poses_and_sorts_frames(tmp_path):
    rng = np.random.default_rng(2)
    c2w = [pose(analytic.rotation(rng, 90), rng.normal(size=3)) for _ in range(3)]
    root = write_scene(tmp_path / "s", c2w, np.array([[20.0, 0, 10], [0, 22.0, 8], [0, 0, 1]]), (16, 20),
                       [np.ones((16, 20))] * 3)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"] = meta["frames"][::-1]  # COLMAP-id order, not frame order
    (root / "transforms.json").write_text(json.dumps(meta))
    scene = data.load_scene(root)
    np.testing.assert_allclose(scene.c2w, np.stack(c2w), atol=1e-12)
    np.testing.assert_array_equal(scene.frame_index, [1, 2, 3])
    assert scene.size == (16, 20) and len(scene) == 3
    assert scene.image(2)[0, 0, 0] == 40  # frame_00003 has grey 2·20


# ----------------------------------------------------------------------------- COLMAP depth

write_colmap_array = colmap.write_colmap_array


def test_colmap_depth_reader(tmp_path):
    depth = np.arange(35, dtype=np.float32).reshape(5, 7) / 3
    write_colmap_array(tmp_path / "a.bin", depth)
    np.testing.assert_array_equal(colmap.read_colmap_array(tmp_path / "a.bin"), depth)
    assert colmap.read_colmap_array(tmp_path / "a.bin", header_only=True) == (5, 7)
    normals = np.random.default_rng(0).random((4, 6, 3)).astype(np.float32)
    write_colmap_array(tmp_path / "n.bin", normals)
    np.testing.assert_array_equal(colmap.read_colmap_array(tmp_path / "n.bin"), normals)
    (tmp_path / "hand.bin").write_bytes(b"3&2&1&" + np.arange(6, dtype="<f4").tobytes())  # 2 rows, 3 columns
    np.testing.assert_array_equal(colmap.read_colmap_array(tmp_path / "hand.bin"), [[0, 1, 2], [3, 4, 5]])
    (tmp_path / "short.bin").write_bytes(b"3&2&1&" + np.arange(5, dtype="<f4").tobytes())
    with pytest.raises(ValueError, match="short.bin.*3x2x1"):
        colmap.read_colmap_array(tmp_path / "short.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a depth map")
    with pytest.raises(ValueError, match="junk.bin.*width&height"):
        colmap.read_colmap_array(tmp_path / "junk.bin")


def test_mvs_depth_is_never_paired_with_the_original_frames(tmp_path):
    """MVS depth maps without their workspace's undistorted images and cameras: a named error, even when
    their size matches images/ (the old 2 % aspect tolerance accepted this)."""
    root = flat_scene(tmp_path, n=2)
    for f in (root / "depths").iterdir():
        f.unlink()
    (root / "depths").rmdir()
    maps = root / "dense" / "stereo" / "depth_maps"
    maps.mkdir(parents=True)
    for k in (1, 2):
        write_colmap_array(maps / f"frame_0000{k}.png.geometric.bin", np.full((16, 20), 5, np.float32))
    with pytest.raises(data.GeometryError, match="dense: incomplete MVS workspace.*undistorted"):
        data.load_scene(root)


def test_dense_depth_is_nearest_resized(tmp_path):
    root, g = analytic.dense_scene(tmp_path / "d", n=3, size=(20, 26), crop=1)  # workspace images 18 x 24
    half = np.arange(108, dtype=np.float32).reshape(9, 12) + 1  # depth at half the workspace resolution
    write_colmap_array(root / "dense" / "stereo" / "depth_maps" / "frame_00002.png.geometric.bin", half)
    scene = data.load_scene(root)
    assert scene.source == "dense" and scene.depth_files[1].name == "frame_00002.png.geometric.bin"
    np.testing.assert_array_equal(scene.depth(1), np.repeat(np.repeat(half, 2, 0), 2, 1))  # nearest


# ----------------------------------------------------------------------------- bad input

def test_missing_or_malformed_transforms(tmp_path):
    with pytest.raises(FileNotFoundError, match="transforms.json"):
        data.load_scene(tmp_path)
    (tmp_path / "depths").mkdir()  # the depths source reads transforms.json (the COLMAP sources do not)
    np.save(tmp_path / "depths" / "frame_00001.npy", np.ones((2, 2), np.float32))
    (tmp_path / "transforms.json").write_text("{ not json")
    with pytest.raises(ValueError, match="transforms.json: malformed JSON"):
        data.load_scene(tmp_path)
    (tmp_path / "transforms.json").write_text('{"fl_x": 1}')
    with pytest.raises(ValueError, match="frames"):
        data.load_scene(tmp_path)


def test_missing_intrinsics_and_image(tmp_path):
    root = flat_scene(tmp_path)
    meta = json.loads((root / "transforms.json").read_text())
    del meta["fl_x"]
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="fl_x"):
        data.load_scene(root)
    root = flat_scene(tmp_path, name="b")
    (root / "images" / "frame_00003.png").unlink()
    with pytest.raises(FileNotFoundError, match="frame_00003.png: missing image"):
        data.load_scene(root)


def test_missing_and_wrong_size_depth(tmp_path):
    root = flat_scene(tmp_path)
    np.save(root / "depths" / "frame_00001.npy", np.ones((16, 16), np.float32))  # images are 16 x 20
    with pytest.raises(data.GeometryError, match="frame_00001.npy: depth is 16x16"):
        data.load_scene(root)  # the first depth map is checked on load,
    np.save(root / "depths" / "frame_00001.npy", np.ones((16, 20), np.float32))
    np.save(root / "depths" / "frame_00002.npy", np.ones((8, 10), np.float32))  # half size: fine
    np.save(root / "depths" / "frame_00003.npy", np.ones((16, 16), np.float32))
    scene = data.load_scene(root)
    assert scene.depth(1).shape == (16, 20)
    with pytest.raises(data.GeometryError, match="frame_00003.npy: depth is 16x16"):
        scene.depth(2)  # the others when read
    np.save(root / "depths" / "frame_00001.npy", np.ones((16, 20, 2), np.float32))
    with pytest.raises(ValueError, match="frame_00001.npy: depth must be a 2-D"):
        data.load_scene(root)
    for wrong in (np.full((16, 20), 5000, np.uint16), np.ones((16, 20), bool), np.full((16, 20), "5")):
        np.save(root / "depths" / "frame_00001.npy", wrong)  # millimetres, a mask, text: never read as pose units
        with pytest.raises(ValueError, match=f"frame_00001.npy: depth must be floating-point.*{wrong.dtype}"):
            data.load_scene(root)
    np.save(root / "depths" / "frame_00001.npy", np.ones((16, 20), np.float16))
    assert data.load_scene(root).depth(0).dtype == np.float32
    (root / "depths" / "frame_00002.npy").unlink()
    with pytest.raises(FileNotFoundError, match="frame_00002.npy: missing depth .1 of 4 frames"):
        data.load_scene(root)


def test_depth_of_cropped_frames_is_refused(tmp_path):
    """Depth of the undistorted frames (a crop a few px smaller, nearly the same aspect, as MVS or a depth
    release writes: 536x954 beside 540x960) is not stretched over the distorted frames; a 1 px rounding
    difference (another downscale of the same picture) is still a resize."""
    root = flat_scene(tmp_path, size=(108, 192))
    np.save(root / "depths" / "frame_00001.npy", np.ones((106, 190), np.float32))  # 1 px cropped off each side
    with pytest.raises(data.GeometryError, match="frame_00001.npy: depth is 106x190.*a crop"):
        data.load_scene(root)
    np.save(root / "depths" / "frame_00001.npy", np.ones((107, 191), np.float32))
    assert data.load_scene(root).depth(0).shape == (108, 192)
    assert not data._scaled_from((540, 960), (536, 954)) and data._scaled_from((540, 960), (270, 480))


def test_nan_inf_negative_depth_is_zeroed_and_counted(tmp_path):
    root = flat_scene(tmp_path)
    d = np.full((16, 20), 5.0, np.float32)
    d[0, :3], d[1, :2], d[2, :4] = np.nan, np.inf, -1
    np.save(root / "depths" / "frame_00001.npy", d)
    scene = data.load_scene(root)
    out = scene.depth(0)
    assert scene.invalid_depth == 9 and np.isfinite(out).all()
    assert (out[:3] == 0).sum() == 9 and (out[3:] == 5).all()
    s = data.make_sample(scene, np.random.default_rng(0), 4, lattices=(20,), contiguous=True, anchor=0)
    q = s["tracks"][0].astype(int)
    bad = ~np.isfinite(d) | (d < 0)
    bad = bad[q[:, 1], q[:, 0]]  # queries on pixels with invalid depth
    assert bad.any() and not s["visible"][:, bad].any() and s["visible"][0, ~bad].all()


def test_singular_pose(tmp_path):
    root = flat_scene(tmp_path)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][1]["transform_matrix"] = np.zeros((4, 4)).tolist()
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="frame images/frame_00002.png: pose is not a rigid"):
        data.load_scene(root)


def test_too_few_frames(tmp_path):
    scene = data.load_scene(flat_scene(tmp_path, n=3))
    with pytest.raises(ValueError, match="has 3 frames, the sample asks for 5"):
        data.make_sample(scene, np.random.default_rng(0), 5)
    index = np.arange(0, 210, 10)  # frames 10 apart: at most 4 others on each side within +-48
    ids, a = data.choose_frames(index, np.random.default_rng(0), 9)
    assert len(ids) == 9 and np.abs(index[ids] - index[ids[a]]).max() <= 48
    with pytest.raises(ValueError, match="other frames within"):
        data.choose_frames(index, np.random.default_rng(0), 10)


def test_dataset_skips_broken_scenes(tmp_path, capsys):
    flat_scene(tmp_path, name="good")
    flat_scene(tmp_path, name="short", n=2)
    (flat_scene(tmp_path, name="noimage") / "images" / "frame_00001.png").unlink()
    ds = data.SceneDataset(tmp_path, size=(16, 20), num_frames=3, lattices=(2,))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(ds.scenes) == 1 and ds.scenes[0].path.endswith("good")
    assert len(err) == 3 and "noimage" in err[0] and "short" in err[1] and "skipped 2 of 3" in err[2]
    assert ds[5]["frames"].shape == (3, 16, 20, 3)
    with pytest.raises(FileNotFoundError, match="python -m scenes.synth"):
        data.SceneDataset(tmp_path / "short")


# ----------------------------------------------------------------------------- samples

def test_query_lattice_is_cell_centres():
    np.testing.assert_array_equal(data.query_lattice((4, 8), (1, 2)), [[4, 2], [2, 1], [6, 1], [2, 3], [6, 3]])
    assert data.query_lattice((336, 336)).shape == (640, 2)


def test_resize_nearest_picks_the_pixel_under_each_centre():
    d = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(data.resize_nearest(d, (4, 3)), [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    np.testing.assert_array_equal(data.resize_nearest(np.arange(4.0).reshape(1, 4), (1, 2)), [[1, 3]])
    np.testing.assert_array_equal(data.resize_nearest(np.arange(4.0).reshape(4, 1), (2, 1)), [[1], [3]])


def test_resizing_scales_tracks_and_intrinsics(tmp_path):
    """A fronto-parallel plane seen from cameras moving in x and y: at any size the tracks are the
    full-size tracks times (W'/W, H'/H), and K scales the same way."""
    size, K = (16, 20), np.array([[20.0, 0, 9.0], [0, 22.0, 8.5], [0, 0, 1]])
    c2w = [pose(np.eye(3), [0.3 * k, -0.2 * k, 0]) for k in range(4)]
    scene = data.load_scene(write_scene(tmp_path / "s", c2w, K, size, [np.full(size, 5.0)] * 4))
    full = data.make_sample(scene, np.random.default_rng(0), 4, lattices=(3,))
    small = data.make_sample(scene, np.random.default_rng(0), 4, size=(8, 30), lattices=(3,))
    scale = np.array([30 / 20, 8 / 16], np.float32)
    np.testing.assert_allclose(small["tracks"], full["tracks"] * scale, atol=1e-4)
    np.testing.assert_allclose(small["K"][:, :2, :2], full["K"][:, :2, :2] * scale[:, None], rtol=1e-6)
    np.testing.assert_allclose(full["tracks"][1] - full["tracks"][0], np.tile([-20 * 0.3 / 5, 22 * 0.2 / 5], (9, 1)), atol=1e-4)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth.make_synthetic(root, 2, seed=3, num_frames=12, size=192)
    return root


def test_sample_contract(synthetic):
    scene = data.load_scene(synthetic / "scene_0000", (64, 64))
    s = data.make_sample(scene, np.random.default_rng(0), 6, lattices=(4, 8), window=5)
    assert set(s) == {"frames", "depth", "K", "c2w", "frame_index", "tracks", "track_depth", "visible", "anchor", "scene"}
    shapes = dict(frames=(6, 64, 64, 3), depth=(6, 64, 64), K=(6, 3, 3), c2w=(6, 4, 4), frame_index=(6,),
                  tracks=(6, 80, 2), track_depth=(6, 80), visible=(6, 80))
    dtypes = dict(frames=np.uint8, depth=np.float32, K=np.float32, c2w=np.float32, frame_index=np.int64,
                  tracks=np.float32, track_depth=np.float32, visible=np.bool_)
    for k in shapes:
        assert s[k].shape == shapes[k] and s[k].dtype == dtypes[k], k
    a = s["anchor"]
    assert (np.diff(s["frame_index"]) > 0).all() and np.abs(s["frame_index"] - s["frame_index"][a]).max() <= 5
    np.testing.assert_array_equal(s["tracks"][a], data.query_lattice((64, 64), (4, 8)))
    np.testing.assert_allclose(s["K"][0, 0, 0], json.loads((synthetic / "scene_0000" / "transforms.json").read_text())["fl_x"] * 64 / 192, rtol=1e-6)
    c = data.make_sample(scene, np.random.default_rng(0), 6, contiguous=True)
    assert c["anchor"] == 0 and (np.diff(c["frame_index"]) == 1).all()


def test_synthetic_tracks_follow_the_texture(synthetic):
    """Images, depth and poses agree: colours at tracked points match; shuffled points do not."""
    scene = data.load_scene(synthetic / "scene_0001", (96, 96))  # downsampled from 192 px: anti-aliased
    s = data.make_sample(scene, np.random.default_rng(1), 8, lattices=(24,))
    a = s["anchor"]
    diffs, shuffled = [], []
    for f in range(8):
        vis = s["visible"][f] & s["visible"][a]
        p, q = s["tracks"][f][vis].astype(int), s["tracks"][a][vis].astype(int)
        c_f, c_a = s["frames"][f][p[:, 1], p[:, 0]].astype(float), s["frames"][a][q[:, 1], q[:, 0]].astype(float)
        diffs.append(np.abs(c_f - c_a).mean())
        shuffled.append(np.abs(c_f - np.roll(c_a, 5, 0)).mean())
    assert s["visible"].mean() > 0.5
    assert np.mean(diffs) < 0.35 * np.mean(shuffled)


def test_synthetic_scene_files_and_determinism(synthetic, tmp_path):
    root = synthetic / "scene_0000"
    meta = json.loads((root / "transforms.json").read_text())
    assert meta["frames"][0]["file_path"] == "images/frame_00001.png" and meta["camera_model"] == "OPENCV"
    assert Image.open(root / "images_2" / "frame_00001.png").size == (96, 96)
    assert np.load(root / "depths" / "frame_00001.npy").dtype == np.float32
    assert data.load_scene(root, (96, 96)).image_files[0].parent.name == "images_2"
    assert data.load_scene(root, (97, 90)).image_files[0].parent.name == "images"
    boxes = meta["synthetic"]["boxes"]
    twins = [b for b in boxes if [c["texture"] for c in boxes].count(b["texture"]) > 1]
    eye = data.load_scene(root).c2w[0, :3, 3]
    assert len(twins) == 2 and twins[0]["half"] == twins[1]["half"]
    assert abs(np.linalg.norm(np.array(twins[0]["centre"]) - eye) - np.linalg.norm(np.array(twins[1]["centre"]) - eye)) > 1.0
    again = synth.synth_scene(tmp_path / "again", 3, num_frames=1, size=192)
    assert (again / "images" / "frame_00001.png").read_bytes() == (root / "images" / "frame_00001.png").read_bytes()
    other = synth.synth_scene(tmp_path / "other", 4, num_frames=1, size=192)
    assert (other / "images" / "frame_00001.png").read_bytes() != (root / "images" / "frame_00001.png").read_bytes()
    stamp = (root / "transforms.json").stat().st_mtime_ns
    synth.make_synthetic(synthetic, 2, seed=3, num_frames=12, size=192)  # complete: nothing rewritten
    assert (root / "transforms.json").stat().st_mtime_ns == stamp


def test_dataset_is_deterministic_and_worker_safe(synthetic):
    ds = data.SceneDataset(synthetic, size=(48, 48), num_frames=(3, 6), lattices=(4,), window=4, seed=7, length=4)
    again = data.SceneDataset(synthetic, size=(48, 48), num_frames=(3, 6), lattices=(4,), window=4, seed=7, length=4)
    assert len(ds) == 4 and ds[1]["scene"] != ds[2]["scene"]
    np.testing.assert_array_equal(ds[3]["tracks"], again[3]["tracks"])
    assert not np.array_equal(ds[0]["frame_index"], ds[2]["frame_index"]) or ds[0]["anchor"] != ds[2]["anchor"]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    for i, item in enumerate(loader):
        np.testing.assert_array_equal(item["tracks"].numpy(), ds[i]["tracks"])
        np.testing.assert_array_equal(item["frames"].numpy(), ds[i]["frames"])


def test_command_line(synthetic, tmp_path, capsys):
    for main, args in ((data.main, []), (data.main, ["show"]), (data.main, ["scan"]), (synth.main, [])):
        with pytest.raises(SystemExit) as e:
            main(args + ["--help"])
        assert e.value.code == 0 and "usage" in capsys.readouterr().out
    synth.main(["--out", str(tmp_path / "new"), "--scenes", "1", "--frames", "3", "--size", "32"])
    assert (tmp_path / "new" / "scene_0000" / "transforms.json").is_file()
    with pytest.raises(SystemExit):
        synth.main(["--out", str(tmp_path / "new"), "--scenes", "0"])
    assert "--scenes must be positive" in capsys.readouterr().err
    out = tmp_path / "fig.png"
    data.main(["show", "--scene", str(synthetic / "scene_0000"), "--out", str(out), "--frames", "3", "--stride", "4",
               "--size", "64"])
    assert Image.open(out).size == (3 * 72 + 8, 2 * 72 + 22 + 44)  # frames, depth, the depth key
    assert "track source depths" in capsys.readouterr().out
    short = tmp_path / "new" / "scene_0000"  # 3 frames: the default stride shrinks to fit
    data.main(["show", "--scene", str(short), "--out", str(out), "--frames", "3", "--size", "32"])
    assert Image.open(out).size[0] == 3 * 40 + 8
    few = tmp_path / "few.png"  # a 2 x 2 lattice: 4 dots a frame instead of 64
    data.main(["show", "--scene", str(short), "--out", str(few), "--frames", "3", "--size", "32", "--lattice", "2"])
    assert Image.open(few).size == Image.open(out).size and few.read_bytes() != out.read_bytes()


def test_tracks_figure_draws_arrays_without_data_py(tmp_path):
    """figures/tracks.py draws from arrays alone (it imports no top-level module): a visible track is a dot
    of its colour at its pixel, a hidden one is not drawn, and depth panels sit under the frames."""
    code = ("import sys; import figures.tracks; "
            "assert not {'data', 'model', 'train', 'probe', 'eval', 'bench'} & set(sys.modules), sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    from figures import tracks
    frames = np.full((2, 40, 40, 3), 255, np.uint8)
    depths = np.full((2, 40, 40), 2.0, np.float32)
    uv = np.array([[[10.5, 10.5], [30.5, 30.5]]] * 2)  # (C, N, 2)
    visible = np.array([[True, True], [True, False]])
    out = tracks.draw_tracks(tmp_path / "t.png", frames, depths, uv, visible, np.array([5, 9]), np.array([0, 4]))
    img = np.asarray(Image.open(out))
    assert img.shape == (2 * 48 + 22 + 44, 2 * 48 + 8, 3)
    x1, top = 8 + 48, 22
    red = img[top + 10, 8 + 10]  # track 0 in column 0: hue 0 -> red
    assert tuple(red) == (255, 0, 0)
    assert tuple(img[top + 30, x1 + 30]) == (255, 255, 255)  # track 1 hidden in column 1: the frame shows through
    assert (img[top + 40 + 8 + 20, 8 + 20] != 0).any()  # the depth panel is coloured (valid depth), not black


def test_command_line_errors_are_one_line(tmp_path, capsys):
    """show / scan on bad input exit with one line naming the scene and the fix (no traceback); a negative
    anchor is refused instead of wrapping round to the last frames."""
    root = flat_scene(tmp_path, n=6)
    show = ["show", "--scene", str(root), "--out", str(tmp_path / "f.png"), "--size", "16"]
    for extra, reason in ((["--frames", "8"], "8 frames 1 apart from position 0 span 8 frames, the scene has 6"),
                          (["--stride", "3"], "span 10 frames, the scene has 6; lower --frames"),
                          (["--anchor", "4"], "from position 4 span 4 frames")):
        with pytest.raises(SystemExit, match=f"error: {re.escape(str(root))}: .*{reason}"):
            data.main(show + extra)
    with pytest.raises(SystemExit) as e:
        data.main(show + ["--anchor", "-1"])
    assert e.value.code == 2 and "--anchor must be a frame position >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="error: .*nothere: no such folder"):
        data.main(["scan", "--data", str(tmp_path / "nothere")])
    with pytest.raises(SystemExit, match="error: .*images: no track source"):
        data.main(["show", "--scene", str(root / "images")])
    scene = data.load_scene(root)
    with pytest.raises(ValueError, match="3 consecutive frames from position -1 do not fit in its 6 frames"):
        data.make_sample(scene, np.random.default_rng(0), 3, anchor=-1, contiguous=True)


@pytest.mark.slow
def test_default_synthetic_scene_renders_and_runs_as_a_script(tmp_path):
    subprocess.run([sys.executable, "-m", "scenes.synth", "--out", str(tmp_path), "--scenes", "1",
                    "--frames", "24"], check=True, capture_output=True, cwd=ROOT)
    scene = data.load_scene(tmp_path / "scene_0000", (336, 336))
    s = data.make_sample(scene, np.random.default_rng(0), 16)
    assert s["tracks"].shape == (16, 640, 2) and s["visible"].mean() > 0.5


# ----------------------------------------------------------------------------- one contract, three sources

def layout_checks(s, g, lattices):
    """Tracks of a depth-source sample against the plane homographies of tests/analytic.py."""
    a = s["anchor"]
    assert s["tracks"].shape[1] == sum(k * k for k in lattices)
    idx = [int(np.flatnonzero(np.arange(len(g["c2w"])) + 1 == fi)[0]) for fi in s["frame_index"]]
    K, c2w = g["K"][idx], g["c2w"][idx]
    np.testing.assert_allclose(s["K"], K, rtol=1e-6)
    np.testing.assert_allclose(s["c2w"], c2w, atol=1e-6)
    query = s["tracks"][a].astype(np.float64)
    expect, z = analytic.plane_tracks(query, a, K, c2w, s["track_depth"][a])
    H, W = g["size"]
    for f in range(len(idx)):
        inside = (expect[f] >= 4).all(1) & (expect[f, :, 0] <= W - 4) & (expect[f, :, 1] <= H - 4)
        vis = s["visible"][f]
        np.testing.assert_allclose(s["tracks"][f][vis], expect[f][vis], atol=1e-3)
        np.testing.assert_allclose(s["track_depth"][f][vis], z[f][vis], rtol=1e-5)
        assert (vis <= (inside | (f == a))).all() and vis.sum() >= 0.95 * inside.sum() and inside.mean() > 0.5


def test_depths_layout_tracks_are_exact(tmp_path):
    root, g = analytic.depths_scene(tmp_path / "s", size=(60, 84))
    scene = data.load_scene(root)
    assert scene.source == "depths" and scene.size == (60, 84)
    s = data.make_sample(scene, np.random.default_rng(0), 4, lattices=(12,))  # cell centres = pixel centres
    layout_checks(s, g, (12,))


def test_dense_layout_takes_frames_K_and_poses_from_the_workspace(tmp_path):
    """A workspace cropped by 3 px beside distorted images_4/ + transforms.json (another K, k1 = -0.06):
    frames, K, poses and depth all come from dense/, and the tracks are exact in that geometry."""
    root, g = analytic.dense_scene(tmp_path / "s", size=(66, 90), crop=3)
    scene = data.load_scene(root)
    assert scene.source == "dense" and scene.size == (60, 84) and not scene.dist.any()
    assert all(f.parent == root / "dense" / "images" for f in scene.image_files)
    np.testing.assert_allclose(scene.K, g["K"])
    s = data.make_sample(scene, np.random.default_rng(1), 4, lattices=(12,))
    layout_checks(s, g, (12,))


@pytest.mark.parametrize("model", list(analytic.CAMERAS))
def test_sparse_layout_tracks_are_the_models_keypoints(tmp_path, model):
    """DL3DV as downloaded (no depth): the poses are COLMAP's (never transforms.json's, which lives in another
    world frame); tracks = keypoints scaled from 320 x 240 to 80 x 60, visible = observed, track_depth = z;
    query points one per cell of the 8x8 grid first; depth = observed points' z at their pixels."""
    root, g = analytic.sparse_scene(tmp_path / "s", model=model)
    scene = data.load_scene(root)
    assert scene.source == "sparse" and scene.size == (60, 80) and scene.depth_files == []
    np.testing.assert_allclose(scene.c2w, g["c2w"], atol=1e-12)
    np.testing.assert_allclose(scene.K, g["K"] / [[4], [4], [1]])
    np.testing.assert_array_equal(scene.dist, np.tile(g["dist"], (6, 1)))
    s = data.make_sample(scene, np.random.default_rng(3), 5, lattices=(8, 24))
    a, N = s["anchor"], s["tracks"].shape[1]
    frames = s["frame_index"] - 1
    obs_a = g["observations"][frames[a]]
    keys, kp = np.array(list(obs_a)), np.array(list(obs_a.values())) / 4
    ids = keys[np.abs(s["tracks"][a][:, None] - kp[None]).sum(-1).argmin(1)].tolist()  # nearest keypoint
    np.testing.assert_allclose(s["tracks"][a], [obs_a[p] / 4 for p in ids], atol=1e-5)
    assert len(set(ids)) == N and 64 < N <= 64 + 576
    cells = (np.floor(s["tracks"][a][:64] / [10, 7.5])).astype(int)
    assert len({tuple(c) for c in cells}) == 64  # the 8x8 grid's budget: one point in each cell
    for f, k in enumerate(frames):
        X = np.array([g["points"][p] for p in ids])
        Xc = (X - g["c2w"][k][:3, 3]) @ g["c2w"][k][:3, :3]
        np.testing.assert_allclose(s["track_depth"][f], Xc[:, 2], rtol=1e-6)
        assert s["visible"][f].tolist() == [p in g["observations"][k] for p in ids]
        vis = s["visible"][f]
        np.testing.assert_allclose(s["tracks"][f][vis], [g["observations"][k][p] / 4 for p in np.array(ids)[vis]],
                                   atol=1e-5)
        uv = np.floor(np.array(list(g["observations"][k].values())) / 4).astype(int)
        assert (s["depth"][f][uv[:, 1], uv[:, 0]] > 0).all() and (s["depth"][f] > 0).sum() <= len(uv)


def test_two_images_of_one_file_name_are_refused(tmp_path):
    """A model of two cameras whose frames share file names (cam0/frame_00001.png, cam1/frame_00001.png) would
    pair one image file with two poses: a named error instead."""
    root, _ = analytic.sparse_scene(tmp_path / "s")
    path = root / data.SPARSE_MODEL / "images.bin"
    images = colmap.read_images_bin(path)
    first = min(images, key=lambda i: images[i]["name"])
    colmap.write_images_bin(path, {i: (im["qvec"], im["tvec"], im["camera_id"],
                                       "cam1/frame_00002.png" if i == first else im["name"],
                                       im["points2D"]["xy"], im["points2D"]["point3D_id"]) for i, im in images.items()})
    with pytest.raises(ValueError, match="images.bin: file name frame_00002.png is listed more than once"):
        data.load_scene(root)


def test_source_order(tmp_path):
    """depths/ first, then dense/, then the SfM model; each scene records its source."""
    root, _ = analytic.sparse_scene(tmp_path / "s")
    assert data.scene_source(root) == "sparse"
    dense, _ = analytic.dense_scene(tmp_path / "d")
    shutil.copytree(dense / "dense", root / "dense")
    assert data.load_scene(root).source == "dense"
    (root / "depths").mkdir()
    for f in (root / "images_4").iterdir():
        np.save(root / "depths" / f"{f.stem}.npy", np.full((60, 80), 3, np.float32))
    meta = json.loads((root / "transforms.json").read_text())
    for fr in meta["frames"]:  # the sparse builder wrote another world frame: make these rigid poses
        fr["transform_matrix"] = np.eye(4).tolist()
    (root / "transforms.json").write_text(json.dumps(meta))
    assert data.load_scene(root).source == "depths"
    with pytest.raises(FileNotFoundError, match="no track source"):
        data.scene_source(flat_scene(tmp_path, name="bare").parent / "bare" / "images")
    text, _ = analytic.sparse_scene(tmp_path / "text")
    for f in ("cameras", "images", "points3D"):  # COLMAP's text export: named, with the command converting it
        (text / data.SPARSE_MODEL / f"{f}.bin").rename(text / data.SPARSE_MODEL / f"{f}.txt")
    with pytest.raises(FileNotFoundError, match="no track source.*holds a text model: convert it with `colmap "
                                                "model_converter .*--output_type BIN`"):
        data.scene_source(text)


# ----------------------------------------------------------------------------- bad scenes: counted skips

def edit_meta(root, change):
    meta = json.loads((root / "transforms.json").read_text())
    change(meta)
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


BAD_SCENES = {
    "fl_x_zero": (lambda m: m.update(fl_x=0), "positive focal lengths"),
    "file_path_null": (lambda m: m["frames"][1].update(file_path=None), "file_path string"),
    "fl_x_string": (lambda m: m.update(fl_x="20"), "fl_x='20'.*must be numbers"),
    "w_zero": (lambda m: m.update(w=0), "image size must be positive"),
    "k3": (lambda m: m["frames"][1].update(k3=0.02), "k3=0.02: only OPENCV distortion"),
    "k4": (lambda m: m["frames"][1].update(k4=0.01), "k4=0.01: only OPENCV distortion"),
    "k5": (lambda m: m.update(k5=-0.01), "k5=-0.01: only OPENCV distortion"),  # top level: every frame has it
    "k6": (lambda m: m["frames"][0].update(k6=0.003), "k6=0.003: only OPENCV distortion"),
    "no_extension": (lambda m: [f.update(file_path=f["file_path"][:-4]) for f in m["frames"]],
                     "frame_00001: missing image .*found images/frame_00001.png: give each frame's file name with"),
    "fisheye": (lambda m: m.update(camera_model="OPENCV_FISHEYE"), "OPENCV_FISHEYE not supported.*undistort the"),
    "listed_twice": (lambda m: m["frames"].append(dict(m["frames"][1])), "frame_00002.png is listed more than once"),
    "nan_pose": (lambda m: m["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")), "not a rigid"),
    "pose_string": (lambda m: m["frames"][2].update(transform_matrix="eye"), "not a rigid"),
}


def test_each_bad_scene_is_a_counted_skip(tmp_path, capsys):
    """#11: every broken scene is skipped with one line naming it and the reason, and counted; good scenes,
    symlinked scenes and scenes in nested folders are kept; folders without transforms.json are listed."""
    root = tmp_path / "root"
    flat_scene(root, name="good")
    for name, (change, _) in BAD_SCENES.items():
        edit_meta(flat_scene(root, name=name), change)
    np.save(flat_scene(root, name="zero_depth") / "depths" / "frame_00001.npy", np.zeros((16, 20), np.float32))
    np.save(flat_scene(root, name="nan_depth") / "depths" / "frame_00001.npy", np.full((16, 20), np.nan, np.float32))
    flat_scene(tmp_path / "elsewhere", name="linked")
    (root / "link").symlink_to(tmp_path / "elsewhere" / "linked", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a loop is visited once
    flat_scene(root / "batch_1K", name="nested")
    (root / "batch_1K" / "no_transforms" / "images").mkdir(parents=True)
    (root / "stray").mkdir()
    ds = data.SceneDataset(root, size=(16, 20), num_frames=3, lattices=(2,))
    err = capsys.readouterr().err
    kept = sorted(Path(s.path).name for s in ds.scenes)
    assert kept == ["good", "link", "nested"]
    assert ds.skipped["scenes"] == len(BAD_SCENES) + 2 and ds.skipped["folders"] == 2
    for name, (_, reason) in BAD_SCENES.items():
        line = [l for l in err.splitlines() if f"root/{name}:" in l]
        assert len(line) == 1 and re.search(reason, line[0]), (name, line)
    assert re.search(r"zero_depth/depths/frame_00001.npy: no valid depth", err)
    assert re.search(r"nan_depth/depths/frame_00001.npy: no valid depth", err)
    assert "batch_1K/no_transforms: no transforms.json" in err and "root/stray: no transforms.json" in err
    assert f"skipped {len(BAD_SCENES) + 2} of {len(BAD_SCENES) + 5} scenes and 2 folders" in err
    for k in range(6):
        s = ds[k]
        assert all(np.isfinite(s[key]).all() for key in ("depth", "K", "c2w", "tracks", "track_depth"))


def test_any_exception_while_loading_is_a_counted_skip(tmp_path, monkeypatch, capsys):
    flat_scene(tmp_path, name="a")
    flat_scene(tmp_path, name="b")
    real = data.load_scene

    def flaky(path, size=None):
        if Path(path).name == "b":
            raise ZeroDivisionError("division by zero")
        return real(path, size)
    monkeypatch.setattr(data, "load_scene", flaky)
    ds = data.SceneDataset(tmp_path, size=(16, 20), num_frames=3, lattices=(2,))
    assert len(ds.scenes) == 1 and ds.skipped["scenes"] == 1
    assert "b: ZeroDivisionError: division by zero" in capsys.readouterr().err


def test_unusable_samples_are_replaced_deterministically(tmp_path, capsys):
    """A scene whose later frames have no depth gives no track pair; a corrupt later PNG fails to decode
    (no preload): each such candidate is replaced by the next one (scene k + j, rng (seed, k, j)), counted,
    warned once per scene; item k stays a pure function of (seed, k)."""
    flat_scene(tmp_path, name="a_good")
    blind = flat_scene(tmp_path, name="b_blind")
    for k in (2, 3, 4):
        np.save(blind / "depths" / f"frame_0000{k}.npy", np.zeros((16, 20), np.float32))
    broken = flat_scene(tmp_path, name="c_broken")
    (broken / "images" / "frame_00003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    ds = data.SceneDataset(tmp_path, size=(16, 20), num_frames=4, lattices=(2,), seed=5, length=9)
    assert len(ds.scenes) == 3
    capsys.readouterr()
    items = [ds[k] for k in range(9)]
    err = capsys.readouterr().err.splitlines()
    assert [Path(s["scene"]).name for s in items] == ["a_good"] * 9
    assert [s["replaced"] for s in items] == [0, 2, 1] * 3
    assert ds.skipped["samples"] == 9 and len(err) == 2
    assert "b_blind" in err[0] and "no track is visible in the anchor and another frame" in err[0]
    assert "c_broken" in err[1] and "frame_00003.png" in err[1]
    again = data.SceneDataset(tmp_path, size=(16, 20), num_frames=4, lattices=(2,), seed=5, length=9)
    expect = data.make_sample(ds.scenes[0], np.random.default_rng([5, 4, 2]), 4, (16, 20), (2,))
    np.testing.assert_array_equal(again[4]["frames"], items[4]["frames"])
    np.testing.assert_array_equal(expect["tracks"], items[4]["tracks"])
    np.testing.assert_array_equal(expect["frame_index"], items[4]["frame_index"])


def test_scan_counts_sources_and_lists_broken_scenes(tmp_path, capsys):
    analytic.depths_scene(tmp_path / "d1")
    analytic.dense_scene(tmp_path / "d2")
    analytic.sparse_scene(tmp_path / "d3")
    analytic.sparse_scene(tmp_path / "d4")
    (tmp_path / "d4" / "colmap" / "sparse" / "0" / "cameras.bin").write_bytes(b"\1\0")
    (tmp_path / "d5").mkdir()
    data.main(["scan", "--data", str(tmp_path), "--size", "32"])
    out = capsys.readouterr().out
    assert "3 usable scenes (1 depths, 1 dense, 1 sparse), 1 broken, 1 folders without transforms.json" in out
    assert re.search(r"broken .*d4: .*cameras.bin: truncated", out) and re.search(r"no transforms.json: .*d5", out)


def test_sparse_and_dense_datasets_in_loader_workers(tmp_path):
    """Picklable scenes of every source: two workers give exactly what the main process gives."""
    analytic.dense_scene(tmp_path / "a")
    analytic.sparse_scene(tmp_path / "b")
    ds = data.SceneDataset(tmp_path, size=(32, 40), num_frames=(3, 4), lattices=(4, 8), window=10, seed=1, length=4)
    assert ds.sources == {"depths": 0, "dense": 1, "sparse": 1}
    clone = pickle.loads(pickle.dumps(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    for k, item in enumerate(loader):
        for key in ("frames", "tracks", "visible", "depth", "track_depth"):
            np.testing.assert_array_equal(item[key].numpy(), ds[k][key])
            np.testing.assert_array_equal(clone[k][key], ds[k][key])


def test_keep_tracks_visible_longest(tmp_path):
    root = analytic.depths_scene(tmp_path / "s", n=6)[0]
    scene = data.load_scene(root)
    full = data.make_sample(scene, np.random.default_rng(0), 4, lattices=(8,), window=5)
    half = data.make_sample(scene, np.random.default_rng(0), 4, lattices=(8,), window=5, keep=0.5)
    assert half["tracks"].shape[1] == 32 and full["tracks"].shape[1] == 64
    counts = full["visible"].sum(0)
    assert half["visible"].sum(0).min() >= np.sort(counts)[::-1][31]  # the 32 visible longest, in query order
    kept = [int(np.flatnonzero((full["tracks"][0] == t).all(-1))[0]) for t in half["tracks"][0]]
    assert kept == sorted(kept)


def test_a_depth_file_holding_a_pickled_object_is_refused_and_runs_nothing(tmp_path):
    """depths/*.npy are read without pickle: an object array (whose unpickling could run code) is a named error."""
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    np.save(tmp_path / "d.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="d.npy: cannot read depth"):
        data.read_depth(tmp_path / "d.npy")
    assert not (tmp_path / "ran").exists()
