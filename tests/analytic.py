"""Scene builders for the tests: one planar world written in each track-source layout data.py reads.

The world is a back wall (z = 8) and a floor (y = 1.5, OpenCV y down) seen from a few slightly rotated
cameras: a concave corner, so nothing hides anything and every track has a closed form (the plane
homography). Each builder returns the folder and the exact geometry it used:
  depths_scene  transforms.json (nerfstudio/OpenGL poses) + images_4/ + depths/<stem>.npy
  dense_scene   a COLMAP MVS workspace dense/ (cropped PINHOLE images, dense/sparse/*.bin, depth_maps),
                beside a distorted images_4/ + transforms.json the loader must NOT pair its depth with
  sparse_scene  DL3DV's SfM model colmap/sparse/0/*.bin at 4x the images_4/ size (any COLMAP camera
                model) + images_4/ + transforms.json in another world frame (nerfstudio's), no depth
Files are written by scenes/layout.py (write_frame, transforms, write_transforms, write_sparse_model) and
scenes/colmap.py (write_colmap_array; tests/test_colmap.py checks the COLMAP writers against pycolmap and the
readers). The OpenGL poses in transforms.json are negated by hand here, not through scenes.layout.gl_to_cv, so
that the reader's conversion is checked against an independent statement of nerfstudio's convention.
Used by tests/test_data.py, tests/test_colmap.py and (for two training steps per layout) tests/test_train.py.
"""
from pathlib import Path

import numpy as np

from scenes.colmap import write_colmap_array
from scenes.layout import frame_name, transforms, write_frame, write_sparse_model, write_transforms

PLANES = [(np.array([0.0, 0, 1]), 8.0), (np.array([0.0, 1, 0]), 1.5)]  # n·X = c: back wall, floor


def rotation(rng, degrees):
    """A random rotation by at most `degrees` (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.radians(rng.uniform(-degrees, degrees))
    S = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * S + (1 - np.cos(a)) * S @ S


def poses(n, seed=0, degrees=4.0, shift=0.3):
    """n OpenCV camera-to-world poses near the origin looking down +z at the wall. (n, 4, 4)."""
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for k in range(n):
        c2w[k, :3, :3], c2w[k, :3, 3] = rotation(rng, degrees), rng.uniform(-shift, shift, 3) * [1, 0.5, 1]
    return c2w


def distort(xy, dist):
    """COLMAP OPENCV on normalised coordinates (k1, k2, p1, p2), written out again for the builders."""
    k1, k2, p1, p2 = dist
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = k1 * r2 + k2 * r2 * r2
    return np.stack([x + x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                     y + y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)], -1)


def ray_hits(K, c2w, uv):
    """Undistorted pixel rays against the planes: z-depth (...), plane id (...), world point (..., 3)."""
    rays = np.stack([(uv[..., 0] - K[0, 2]) / K[0, 0], (uv[..., 1] - K[1, 2]) / K[1, 1], np.ones(uv.shape[:-1])], -1)
    d = rays @ c2w[:3, :3].T
    with np.errstate(divide="ignore"):
        lam = np.stack([(c - n @ c2w[:3, 3]) / (d @ n) for n, c in PLANES])  # (P, ...) ray parameter = z-depth
    lam[lam <= 0] = np.inf
    z, hit = lam.min(0), lam.argmin(0)
    return z, hit, c2w[:3, 3] + z[..., None] * d


def pixel_centres(size):
    H, W = size
    v, u = np.mgrid[:H, :W] + 0.5
    return np.stack([u, v], -1)  # (H, W, 2)


def render(K, c2w, size):
    """uint8 (H, W, 3): a smooth colour pattern of the world point each pixel sees (pinhole), and its depth."""
    z, hit, X = ray_hits(K, c2w, pixel_centres(size))
    rgb = 0.5 + 0.5 * np.stack([np.sin(2.1 * X[..., 0] + hit), np.sin(1.7 * X[..., 1] + 2 * X[..., 2]),
                                np.cos(1.3 * (X[..., 0] + X[..., 2]) - hit)], -1)
    return (255 * rgb).round().astype(np.uint8), z.astype(np.float32)


def plane_tracks(query, a, K, c2w, depth_a):
    """Closed form: p_b ~ K_b (R + t n_aᵀ / c_a) K_a⁻¹ p_a on the plane the anchor ray hits, and z_b.
    query (N, 2) px in frame a (pinhole); K (F, 3, 3); c2w (F, 4, 4). -> tracks (F, N, 2), z (F, N)."""
    _, hit, _ = ray_hits(K[a], c2w[a], query)
    tracks, zs = np.zeros((len(c2w), len(query), 2)), np.zeros((len(c2w), len(query)))
    ph_a = np.c_[query, np.ones(len(query))]
    for b in range(len(c2w)):
        Ra, ta, Rb, tb = c2w[a, :3, :3], c2w[a, :3, 3], c2w[b, :3, :3], c2w[b, :3, 3]
        R, t = Rb.T @ Ra, Rb.T @ (ta - tb)  # anchor camera -> camera b
        for p, (n, c) in enumerate(PLANES):
            n_a, c_a = Ra.T @ n, c - n @ ta
            ph = ph_a @ (K[b] @ (R + np.outer(t, n_a) / c_a) @ np.linalg.inv(K[a])).T
            on = hit == p
            tracks[b, on] = ph[on, :2] / ph[on, 2:]
            X_a = ph_a @ np.linalg.inv(K[a]).T * depth_a[:, None]
            zs[b, on] = (X_a @ R.T + t)[on, 2]
    return tracks, zs


def _nerfstudio(root, names, c2w_cv, K, size, dist=(0, 0, 0, 0), world=np.eye(3), scale=1.0):
    """transforms.json: OpenGL camera axes (columns y, z negated by hand), optionally in another world
    (rotated by `world`, translations scaled by `scale`, as nerfstudio's applied_transform and scene scale)."""
    c2w_gl = []
    for m in c2w_cv:
        gl = np.eye(4)
        gl[:3, :3], gl[:3, 3] = world @ m[:3, :3], scale * world @ m[:3, 3]
        gl[:3, 1:3] *= -1
        c2w_gl.append(gl)
    write_transforms(root, transforms(K, size, [f"images/{n}" for n in names], c2w_gl, dist))


def depths_scene(root, n=6, size=(60, 80), seed=0):
    """depths/ layout at images_4/ size; transforms.json intrinsics at 4x (DL3DV's full resolution)."""
    root = Path(root)
    K = np.array([[70.0, 0, 43.0], [0, 64.0, 27.5], [0, 0, 1]])
    c2w = poses(n, seed)
    names = [frame_name(k) for k in range(n)]
    for name, m in zip(names, c2w):
        write_frame(root, name, *render(K, m, size), folder="images_4")
    _nerfstudio(root, names, c2w, np.diag([4.0, 4, 1]) @ K, (4 * size[0], 4 * size[1]))
    return root, dict(K=np.repeat(K[None], n, 0), c2w=c2w, size=size)


def dense_scene(root, n=6, size=(60, 80), crop=3, seed=0):
    """image_undistorter + patch_match_stereo workspace: dense/images/ cropped by `crop` px on the left and
    top (PINHOLE K with cx, cy - crop), dense/sparse/{cameras,images,points3D}.bin, depth_maps/*.geometric.bin.
    Beside it, distorted images_4/ + transforms.json (k1 = -0.06, another K) that must not be used."""
    root = Path(root)
    K_full = np.array([[70.0, 0, 43.0], [0, 64.0, 27.5], [0, 0, 1]])
    K = K_full - np.array([[0, 0, crop], [0, 0, crop], [0, 0, 0]])
    dsize = (size[0] - 2 * crop, size[1] - 2 * crop)
    c2w = poses(n, seed)
    ws = root / "dense"
    (ws / "stereo" / "depth_maps").mkdir(parents=True)
    names = [frame_name(k) for k in range(n)]
    for name, m in zip(names, c2w):
        rgb, z = render(K, m, dsize)
        write_frame(ws, name, rgb)
        write_colmap_array(ws / "stereo" / "depth_maps" / f"{name}.geometric.bin", z)
        write_frame(root, name, render(K_full, m, size)[0], folder="images_4")
    write_sparse_model(ws / "sparse", ("PINHOLE", dsize[1], dsize[0], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]), names,
                       c2w, np.arange(n, 0, -1), [np.zeros((0, 2))] * n, [[]] * n, {}, (0, 0, 0))  # ids reversed
    _nerfstudio(root, names, c2w, 4 * np.array([[75.0, 0, 40], [0, 75, 30], [0, 0, 0.25]]), (4 * size[0], 4 * size[1]),
                dist=(-0.06, 0.0, 0.0, 0.0))
    return root, dict(K=np.repeat(K[None], n, 0), c2w=c2w, size=dsize)


CAMERAS = {  # model -> params at the full resolution 320 x 240 (images_4/ is 80 x 60)
    "OPENCV": [280.0, 256.0, 172.0, 110.0, -0.06, 0.01, 0.002, -0.001],
    "PINHOLE": [280.0, 256.0, 172.0, 110.0],
    "SIMPLE_PINHOLE": [270.0, 172.0, 110.0],
    "SIMPLE_RADIAL": [270.0, 172.0, 110.0, -0.05],
    "RADIAL": [270.0, 172.0, 110.0, -0.05, 0.02],
}


def camera_K_dist(model, p):
    """Builders' own reading of a COLMAP camera: K (3, 3), OPENCV-style (k1, k2, p1, p2)."""
    fx, fy, cx, cy = (p[0], p[1], p[2], p[3]) if model in ("OPENCV", "PINHOLE") else (p[0], p[0], p[1], p[2])
    dist = {"OPENCV": p[4:8], "SIMPLE_RADIAL": [*p[3:4], 0, 0, 0], "RADIAL": [*p[3:5], 0, 0]}.get(model, [0, 0, 0, 0])
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), np.array(dist, float)


def sparse_scene(root, n=6, size=(60, 80), model="OPENCV", points_per_frame=300, keep=0.8, seed=0):
    """DL3DV as downloaded: colmap/sparse/0/*.bin at 4x the images_4/ size, transforms.json in another world
    frame (nerfstudio's axis swap and scale), no depth. 3D points on the planes; a point is observed in a
    frame where it projects inside the image, with probability `keep`; keypoints are its exact (distorted)
    projections; some keypoints have no 3D point (id -1). Image ids run in reverse frame order, point ids
    are sparse. -> folder, dict(K, dist at full resolution, c2w, size, full, points {id: xyz},
    observations {frame: {point id: keypoint (2,) full-res px}})."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    full = (4 * size[0], 4 * size[1])
    K, dist = camera_K_dist(model, CAMERAS[model])
    c2w = poses(n, seed)
    names = [frame_name(k) for k in range(n)]
    X = []
    for m in c2w:  # points where pixel rays (pinhole) meet the planes, from every view
        uv = rng.uniform([8, 8], [full[1] - 8, full[0] - 8], (points_per_frame, 2))
        X.append(ray_hits(K, m, uv)[2])
    X = np.concatenate(X)
    pids = 10 + 7 * np.arange(len(X))
    obs, keypoints, point_ids = {}, [], []
    for k, (name, m) in enumerate(zip(names, c2w)):
        write_frame(root, name, render(K / np.array([[4], [4], [1]]), m, size)[0], folder="images_4")
        Xc = (X - m[:3, 3]) @ m[:3, :3]
        xy = distort(Xc[:, :2] / Xc[:, 2:], dist) * [K[0, 0], K[1, 1]] + K[:2, 2]
        seen = (Xc[:, 2] > 0.1) & (xy >= 0).all(1) & (xy[:, 0] < full[1]) & (xy[:, 1] < full[0]) & (rng.random(len(X)) < keep)
        idx = rng.permutation(np.flatnonzero(seen))  # keypoint order unrelated to point ids
        junk = rng.uniform([0, 0], [full[1], full[0]], (5, 2))  # keypoints with no 3D point
        keypoints.append(np.concatenate([xy[idx], junk]))
        point_ids.append(np.concatenate([pids[idx], -np.ones(5, np.int64)]))
        obs[k] = {int(p): xy[i] for p, i in zip(pids[idx], idx)}
    observed = {int(p) for ids in point_ids for p in ids if p >= 0}
    write_sparse_model(root / "colmap" / "sparse" / "0", (model, full[1], full[0], CAMERAS[model]), names, c2w,
                       np.arange(n, 0, -1), keypoints, point_ids, {int(p): X[i] for i, p in enumerate(pids)},
                       (200, 100, 50))
    swap = np.array([[0, 1.0, 0], [1, 0, 0], [0, 0, -1]])  # nerfstudio's applied_transform: another world frame
    _nerfstudio(root, names, c2w, K, full, dist=tuple(dist), world=swap, scale=2.5)
    return root, dict(K=np.repeat(K[None], n, 0), dist=dist, c2w=c2w, size=size, full=full,
                      points={p: X[i] for i, p in enumerate(pids) if p in observed}, observations=obs,
                      image_ids=np.arange(n, 0, -1))
