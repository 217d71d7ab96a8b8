"""data.py's COLMAP reader against pycolmap (COLMAP's own library, a test-only dependency): a
Reconstruction of a synthetic scene written by pycolmap is read back and must agree exactly (cameras,
poses, keypoints, tracks); the SfM-source samples must follow pycolmap's tracks; the five supported camera
models must project as COLMAP does; truncated and corrupt files give ColmapError naming the file."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from scenes import colmap
import data
from scenes import synth

pycolmap = pytest.importorskip("pycolmap")

PARAMS = {  # at 128 x 128 (the synthetic images/ are 64 px: COLMAP's model is at twice that)
    "OPENCV": [120.0, 116.0, 63.0, 65.5, -0.06, 0.012, 0.0015, -0.001],
    "PINHOLE": [120.0, 116.0, 63.0, 65.5],
    "SIMPLE_PINHOLE": [118.0, 63.0, 65.5],
    "SIMPLE_RADIAL": [118.0, 63.0, 65.5, -0.05],
    "RADIAL": [118.0, 63.0, 65.5, -0.05, 0.02],
}


def reconstruction(scene_dir, model="OPENCV", step=6, seed=0):
    """A pycolmap Reconstruction of a synthetic scene: the scene's own poses; 3D points unprojected from
    its exact depth on a pixel grid of every frame; each point observed where it is visible (the depth
    test) inside the image, with 90 % probability; keypoints = pycolmap's projection with `model`.
    Image ids run backwards, so nothing may rely on ids following frame order."""
    rng = np.random.default_rng(seed)
    scene = data.load_scene(scene_dir)  # the depths source: pinhole 64 px, exact depth
    n, (H, W) = len(scene), scene.size
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model=model, width=2 * W, height=2 * H, params=PARAMS[model], camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    depth = np.stack([scene.depth(i) for i in range(n)])
    v, u = np.mgrid[step // 2:H:step, step // 2:W:step].reshape(2, -1) + 0.5
    X = np.concatenate([data.cam_to_world(data.unproject(np.stack([u, v], -1), depth[i, v.astype(int), u.astype(int)],
                                                         scene.K[i]), scene.c2w[i]) for i in range(n)])
    observed = []
    for i in range(n):
        w2c = np.linalg.inv(scene.c2w[i])[:3]
        uv, z = data.project(data.world_to_cam(X, scene.c2w[i]), scene.K[i])
        seen = data.visibility(uv, z, data.lookup_depth(depth[i][None], uv[None])[0], (H, W), margin=1) \
            & (rng.random(len(X)) < 0.9)
        kp = cam.img_from_cam(X @ w2c[:, :3].T + w2c[:, 3])  # COLMAP's own distortion, at 128 px
        seen &= ((kp >= 0) & (kp < (2 * W, 2 * H))).all(1)  # distortion can push a point out: keypoints lie inside
        kp = kp[seen]
        junk = rng.uniform(0, 2 * W, (3, 2))  # keypoints of no 3D point
        image = pycolmap.Image(name=Path(scene.image_files[i]).name, keypoints=np.concatenate([kp, junk]),
                               camera_id=1, image_id=n - i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c))
        observed.append(np.flatnonzero(seen))
    for p in range(len(X)):
        elements = [pycolmap.TrackElement(n - i, int(np.searchsorted(observed[i], p)))
                    for i in range(n) if p in set(observed[i][np.searchsorted(observed[i], p):][:1])]
        if len(elements) >= 2:
            rec.add_point3D(X[p], pycolmap.Track(elements), np.array([9, 8, 7], np.uint8))
    return rec


@pytest.fixture(scope="module")
def colmap_scene(tmp_path_factory):
    """A synthetic scene as DL3DV ships it: images/ (64 px), transforms.json, colmap/sparse/0 written by
    pycolmap at 128 px with an OPENCV camera, no depth."""
    root = synth.synth_scene(tmp_path_factory.mktemp("colmap") / "scene", seed=4, num_frames=6, size=64)
    rec = reconstruction(root)
    shutil.rmtree(root / "depths")
    shutil.rmtree(root / "images_2")
    (root / "colmap" / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(root / "colmap" / "sparse" / "0"))
    return root, rec


def test_reader_agrees_with_pycolmap(colmap_scene):
    root, rec = colmap_scene
    model = root / "colmap" / "sparse" / "0"
    cameras = colmap.read_cameras_bin(model / "cameras.bin")
    assert list(cameras) == [1]
    name, w, h, params = cameras[1]
    assert (name, w, h) == (rec.cameras[1].model.name, rec.cameras[1].width, rec.cameras[1].height)
    np.testing.assert_array_equal(params, rec.cameras[1].params)
    images = colmap.read_images_bin(model / "images.bin")
    assert sorted(images) == sorted(rec.images)
    for iid, im in rec.images.items():
        ours = images[iid]
        assert ours["name"] == im.name and ours["camera_id"] == im.camera_id
        pose = im.cam_from_world()
        x, y, z, w_ = pose.rotation.quat
        np.testing.assert_array_equal(ours["qvec"], [w_, x, y, z])
        np.testing.assert_array_equal(ours["tvec"], pose.translation)
        np.testing.assert_allclose(np.linalg.inv(colmap.colmap_c2w(ours))[:3], pose.matrix(), atol=1e-14)
        np.testing.assert_array_equal(ours["points2D"]["xy"], [p.xy for p in im.points2D])
        np.testing.assert_array_equal(ours["points2D"]["point3D_id"],
                                      [p.point3D_id if p.has_point3D() else -1 for p in im.points2D])
    ids, xyz, tracks = colmap.read_points3d_bin(model / "points3D.bin", tracks=True)
    assert sorted(ids.tolist()) == sorted(rec.points3D)
    for pid, X, track in zip(ids, xyz, tracks):
        point = rec.points3D[int(pid)]
        np.testing.assert_array_equal(X, point.xyz)
        assert sorted(map(tuple, track.tolist())) == sorted((e.image_id, e.point2D_idx) for e in point.track.elements)
    assert len(ids) > 100 and np.mean([len(t) for t in tracks]) > 3


def test_writers_invert_the_readers(colmap_scene, tmp_path):
    """colmap.write_*_bin of what the readers read from pycolmap's files gives those files byte for byte
    (points3D's colour and error, which the reader leaves out, from pycolmap); a wrong camera is refused."""
    root, rec = colmap_scene
    model = root / "colmap" / "sparse" / "0"
    colmap.write_cameras_bin(tmp_path / "cameras.bin", colmap.read_cameras_bin(model / "cameras.bin"))
    images = colmap.read_images_bin(model / "images.bin")
    colmap.write_images_bin(tmp_path / "images.bin", {
        i: (im["qvec"], im["tvec"], im["camera_id"], im["name"], im["points2D"]["xy"], im["points2D"]["point3D_id"])
        for i, im in images.items()})
    ids, xyz, tracks = colmap.read_points3d_bin(model / "points3D.bin", tracks=True)
    colmap.write_points3d_bin(tmp_path / "points3D.bin", {
        int(p): (X, rec.points3D[int(p)].color, rec.points3D[int(p)].error, t) for p, X, t in zip(ids, xyz, tracks)})
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / name).read_bytes() == (model / name).read_bytes(), name
    for iid, im in images.items():  # poses: colmap_w2c inverts colmap_c2w
        q, t = colmap.colmap_w2c(colmap.colmap_c2w(im))
        np.testing.assert_allclose(q, im["qvec"] * np.sign(im["qvec"][0]), atol=1e-12)
        np.testing.assert_allclose(t, im["tvec"], atol=1e-12)
    with pytest.raises(colmap.ColmapError, match="cameras.bin: camera 1: PINHOLE with 3 parameters"):
        colmap.write_cameras_bin(tmp_path / "cameras.bin", {1: ("PINHOLE", 8, 8, [1.0, 4, 4])})


def test_sparse_samples_follow_pycolmaps_tracks(colmap_scene):
    """query = the anchor's keypoints of 3D points; tracks[f] = the same point's keypoint in frame f (scaled
    from 128 to 48 px), visible = observed; track_depth = its z; depth = observed points' z at their pixels."""
    root, rec = colmap_scene
    scene = data.load_scene(root, (48, 48))
    assert scene.source == "sparse" and len(scene) == 6
    by_name = {im.name: im for im in rec.images.values()}
    s = data.make_sample(scene, np.random.default_rng(2), 5, lattices=(4, 8), window=10)
    a, N = s["anchor"], s["tracks"].shape[1]
    assert 40 < N <= 16 + 64
    anchor = by_name[Path(scene.image_files[np.flatnonzero(scene.frame_index == s["frame_index"][a])[0]]).name]
    scale = 48 / 128
    kp = {p.point3D_id: p.xy * scale for p in anchor.points2D if p.has_point3D()}
    query_ids = []
    for q in s["tracks"][a]:  # every query is one of the anchor's keypoints with a 3D point
        pid = min(kp, key=lambda p: np.abs(kp[p] - q).sum())
        np.testing.assert_allclose(kp[pid], q, atol=1e-5)
        query_ids.append(pid)
    assert len(set(query_ids)) == N
    for f, fi in enumerate(s["frame_index"]):
        im = by_name[f"frame_{fi:05d}.png"]
        seen = {p.point3D_id: p.xy * scale for p in im.points2D if p.has_point3D()}
        assert s["visible"][f].tolist() == [pid in seen for pid in query_ids]
        for n, pid in enumerate(query_ids):
            cam_point = im.cam_from_world() * rec.points3D[pid].xyz
            assert s["track_depth"][f, n] == pytest.approx(cam_point[2], rel=1e-6)
            if pid in seen:
                np.testing.assert_allclose(s["tracks"][f, n], seen[pid], atol=1e-5)
            else:  # not observed: where the camera model projects it (its distortion), scaled
                uv = rec.cameras[1].img_from_cam(cam_point) * scale
                np.testing.assert_allclose(s["tracks"][f, n], uv, atol=1e-4)
        z = {tuple(np.floor(xy).astype(int)): (im.cam_from_world() * rec.points3D[pid].xyz)[2] for pid, xy in seen.items()}
        for (u, v), depth in z.items():
            assert s["depth"][f, v, u] <= depth * (1 + 1e-6)  # the nearest point where two share a pixel
        assert (s["depth"][f] > 0).sum() == len(z)


@pytest.mark.parametrize("model", list(PARAMS))
def test_camera_models_project_as_colmap(model):
    rng = np.random.default_rng(1)
    cam = pycolmap.Camera(model=model, width=128, height=128, params=PARAMS[model])
    K, dist = colmap.colmap_intrinsics((model, 128, 128, np.array(PARAMS[model])), "test")
    z = rng.uniform(1, 4, 200)
    X = np.c_[rng.uniform(-0.55, 0.55, (200, 2)) * z[:, None], z]  # rays inside the 128 px image
    uv, z = data.project(X, K, dist)
    np.testing.assert_allclose(uv, cam.img_from_cam(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(data.unproject(uv, z, K, dist), X, atol=1e-6)
    np.testing.assert_allclose(K, cam.calibration_matrix(), atol=0)


def test_unsupported_camera_model_is_named(tmp_path):
    with pytest.raises(colmap.ColmapError, match="cam.bin camera 3: camera model OPENCV_FISHEYE is not supported"):
        colmap.colmap_intrinsics(("OPENCV_FISHEYE", 10, 10, np.zeros(8)), "cam.bin camera 3")


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin"])
def test_truncated_and_corrupt_files_are_named(colmap_scene, tmp_path, name):
    root, _ = colmap_scene
    good = (root / "colmap" / "sparse" / "0" / name).read_bytes()
    read = {"cameras.bin": colmap.read_cameras_bin, "images.bin": colmap.read_images_bin,
            "points3D.bin": colmap.read_points3d_bin}[name]
    bad = tmp_path / name
    for cut in (0, 5, 8 + 3, len(good) // 2, len(good) - 1):
        bad.write_bytes(good[:cut])
        with pytest.raises(colmap.ColmapError, match=f"{name}: truncated"):
            read(bad)
    bad.write_bytes(good + b"\0" * 3)
    with pytest.raises(colmap.ColmapError, match=f"{name}: 3 bytes after the last record"):
        read(bad)
    bad.write_bytes(b"\xff" * 8 + good[8:])  # a count no file this size can hold
    with pytest.raises(colmap.ColmapError, match=f"{name}: (truncated|says)"):
        read(bad)
    if name == "cameras.bin":
        bad.write_bytes(good[:12] + (99).to_bytes(4, "little") + good[16:])  # model id 99
        with pytest.raises(colmap.ColmapError, match="model id 99, which COLMAP does not define"):
            read(bad)
    with pytest.raises(colmap.ColmapError, match="cannot read"):
        read(tmp_path / "absent.bin")


def test_a_corrupt_model_is_a_counted_skip(colmap_scene, tmp_path, capsys):
    root, _ = colmap_scene
    good, bad = tmp_path / "data" / "good", tmp_path / "data" / "bad"
    shutil.copytree(root, good)
    shutil.copytree(root, bad)
    images = bad / "colmap" / "sparse" / "0" / "images.bin"
    images.write_bytes(images.read_bytes()[:-10])
    ds = data.SceneDataset(tmp_path / "data", size=(32, 32), num_frames=3, lattices=(4,), window=10)
    assert [Path(s.path).name for s in ds.scenes] == ["good"] and ds.skipped["scenes"] == 1
    assert "images.bin: truncated" in capsys.readouterr().err
    assert ds[0]["visible"].any()
