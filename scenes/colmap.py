"""COLMAP's binary files in numpy: the sparse model (cameras.bin, images.bin, points3D.bin, after COLMAP's
scripts/python/read_write_model.py; read and written) and the MVS arrays (*.geometric.bin, after
read_write_dense.py), with a named error (`ColmapError`, naming the file and the byte range) for truncated or
corrupt files.

The writers (`write_cameras_bin`, `write_images_bin`, `write_points3d_bin`, `write_colmap_array`) are the
readers' inverse, for the scenes the tests and bench.py build (through scenes/layout.py's
`write_sparse_model`). data.py reads DL3DV's SfM model (colmap/sparse/0) and MVS workspaces (dense/) through
the readers.
Conventions: images.bin stores world-to-camera (R, t) in OpenCV axes, as the rest of the project uses;
pixel centres sit at +0.5 as in COLMAP.

Run: no entry point; tests are `python -m pytest tests/test_colmap.py -q` (pycolmap is the oracle there).
References: https://github.com/colmap/colmap/blob/main/scripts/python/read_write_model.py, .../read_write_dense.py;
camera models: https://colmap.github.io/cameras.html
"""
import mmap
import os
import struct

import numpy as np


class ColmapError(ValueError):
    """A COLMAP file that cannot be read: truncated, corrupt, or an unsupported camera model."""


# model id -> (name, number of params), after COLMAP's src/colmap/sensor/models.h
COLMAP_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
                 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16), 12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5),
                 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4), 16: ("EUCM", 6), 17: ("EQUIRECTANGULAR", 2)}
MODEL_IDS = {name: model_id for model_id, (name, _) in COLMAP_MODELS.items()}
POINT2D = np.dtype([("xy", "<f8", 2), ("point3D_id", "<i8")])  # images.bin keypoint record; id -1 = none


def _unpack(buf, pos, fmt, path, what):
    """struct.unpack_from with a named error at the end of the buffer. -> (values, next position)."""
    end = pos + struct.calcsize(fmt)
    if end > len(buf):
        raise ColmapError(f"{path}: truncated: {what} needs bytes {pos}-{end}, the file has {len(buf)}; "
                          f"copy the model again or re-export it (colmap model_converter)")
    return struct.unpack_from(fmt, buf, pos), end


def _read_bin(path, mapped=False):
    """The file's bytes; mapped: a read-only memory map instead, so a reader that skips records (the poses of
    images.bin without its keypoints) only pages in what it touches. Close it before returning."""
    try:
        with open(path, "rb") as f:
            if mapped and os.fstat(f.fileno()).st_size:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return f.read()
    except OSError as e:
        raise ColmapError(f"{path}: cannot read ({e.strerror})") from None


def _end(buf, pos, path):
    if pos != len(buf):
        raise ColmapError(f"{path}: {len(buf) - pos} bytes after the last record: corrupt or not this file type")


def read_cameras_bin(path):
    """COLMAP cameras.bin (read_write_model.py::read_cameras_binary): uint64 count, then per camera
    int32 id, int32 model id, uint64 width, uint64 height, float64 params[n].
    -> {camera_id: (model name, width, height, params (n,) float64)}."""
    buf = _read_bin(path)
    (count,), pos = _unpack(buf, 0, "<Q", path, "the camera count")
    cameras = {}
    for k in range(count):
        (cid, model, w, h), pos = _unpack(buf, pos, "<iiQQ", path, f"camera {k}")
        if model not in COLMAP_MODELS:
            raise ColmapError(f"{path}: camera {cid} has model id {model}, which COLMAP does not define: corrupt file")
        name, n = COLMAP_MODELS[model]
        params, pos = _unpack(buf, pos, f"<{n}d", path, f"camera {cid}'s {n} {name} parameters")
        cameras[cid] = (name, w, h, np.array(params))
    _end(buf, pos, path)
    return cameras


def read_images_bin(path, keypoints=True):
    """COLMAP images.bin (read_write_model.py::read_images_binary): uint64 count, then per image int32 id,
    float64 qw qx qy qz tx ty tz (world-to-camera), int32 camera id, NUL-terminated name, uint64 n, and n
    records (float64 x, float64 y, int64 point3D id; -1 = none). -> {image_id: dict(name, camera_id,
    qvec (4,), tvec (3,), points2D (n,) POINT2D record array, or None with keypoints=False, points2D_at
    (byte offset, n) of those records)}."""
    buf = _read_bin(path, mapped=not keypoints)
    try:
        return _parse_images(buf, path, keypoints)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _parse_images(buf, path, keypoints):
    (count,), pos = _unpack(buf, 0, "<Q", path, "the image count")
    images = {}
    for k in range(count):
        (iid, *pose, cid), pos = _unpack(buf, pos, "<i7di", path, f"image {k}")
        end = buf.find(b"\0", pos)
        if end < 0:
            raise ColmapError(f"{path}: truncated: image {iid}'s name has no terminating NUL byte")
        try:
            name = buf[pos:end].decode()
        except UnicodeDecodeError:
            raise ColmapError(f"{path}: image {iid}'s name is not UTF-8: corrupt file") from None
        (n,), pos = _unpack(buf, end + 1, "<Q", path, f"image {iid}'s keypoint count")
        _unpack(buf, pos, f"<{24 * n}x", path, f"image {iid}'s {n} keypoints")
        points = np.frombuffer(buf, POINT2D, n, pos) if keypoints else None
        images[iid] = dict(name=name, camera_id=cid, qvec=np.array(pose[:4]), tvec=np.array(pose[4:]),
                           points2D=points, points2D_at=(pos, n))
        pos += 24 * n
    _end(buf, pos, path)
    return images


def read_points3d_bin(path, tracks=False):
    """COLMAP points3D.bin (read_write_model.py::read_points3D_binary): uint64 count, then per point uint64
    id, float64 xyz, uint8 rgb, float64 error, uint64 track length L, L x (int32 image id, int32 keypoint
    index). -> ids (P,) int64, xyz (P, 3) float64, and with tracks=True a list of (L, 2) int32 arrays.
    Only the record offsets are found in Python; ids and xyz are gathered in numpy (~0.3 us per point)."""
    buf = _read_bin(path)
    (count,), pos = _unpack(buf, 0, "<Q", path, "the point count")
    if count > (len(buf) - 8) // 51:
        raise ColmapError(f"{path}: truncated or corrupt: says {count} points, but {len(buf)} bytes hold at "
                          f"most {(len(buf) - 8) // 51}")
    starts, length, size = np.empty(count, np.int64), struct.Struct("<Q").unpack_from, len(buf)
    for k in range(count):
        if pos + 51 > size:
            raise ColmapError(f"{path}: truncated: point {k} of {count} needs bytes {pos}-{pos + 51}, the file "
                              f"has {size}; copy the model again or re-export it (colmap model_converter)")
        starts[k] = pos
        pos += 51 + 8 * length(buf, pos + 43)[0]  # header (id, xyz, rgb, error, L) then L track elements
    if pos > size:
        raise ColmapError(f"{path}: truncated: the last point's track needs bytes up to {pos}, the file has {size}")
    _end(buf, pos, path)
    raw = np.frombuffer(buf, np.uint8)[starts[:, None] + np.arange(32)]  # (P, 32): id, x, y, z
    ids, xyz = raw[:, :8].copy().view("<i8")[:, 0], raw[:, 8:].copy().view("<f8")
    if not tracks:
        return ids, xyz
    lengths = (np.diff(np.append(starts, pos)) - 51) // 8
    return ids, xyz, [np.frombuffer(buf, "<i4", 2 * n, p + 51).reshape(n, 2) for p, n in zip(starts, lengths)]


def write_cameras_bin(path, cameras):
    """Inverse of read_cameras_bin (read_write_model.py::write_cameras_binary): cameras {camera_id: (model
    name, width, height, params (n,))}, n as the model defines."""
    out = [struct.pack("<Q", len(cameras))]
    for cid, (model, w, h, params) in cameras.items():
        if model not in MODEL_IDS or len(params) != COLMAP_MODELS[MODEL_IDS[model]][1]:
            raise ColmapError(f"{path}: camera {cid}: {model} with {len(params)} parameters is not a COLMAP camera")
        out += [struct.pack("<iiQQ", cid, MODEL_IDS[model], w, h), struct.pack(f"<{len(params)}d", *params)]
    with open(path, "wb") as f:
        f.write(b"".join(out))


def write_images_bin(path, images):
    """Inverse of read_images_bin (read_write_model.py::write_images_binary): images {image_id: (qvec (4,)
    w x y z, tvec (3,) world-to-camera, camera_id, name, xy (n, 2) keypoints in px, point3D ids (n,), -1 =
    none)}."""
    out = [struct.pack("<Q", len(images))]
    for iid, (qvec, tvec, cid, name, xy, pids) in images.items():
        points = np.empty(len(xy), POINT2D)  # (n,) records: x, y float64, point3D id int64
        points["xy"], points["point3D_id"] = np.reshape(xy, (-1, 2)), pids
        out += [struct.pack("<i7di", iid, *qvec, *tvec, cid), name.encode() + b"\0", struct.pack("<Q", len(xy)),
                points.tobytes()]
    with open(path, "wb") as f:
        f.write(b"".join(out))


def write_points3d_bin(path, points):
    """Inverse of read_points3d_bin (read_write_model.py::write_points3D_binary): points {point3D_id: (xyz
    (3,), rgb (3,) uint8, reprojection error, track: (image_id, keypoint index) pairs, (L, 2))}."""
    out = [struct.pack("<Q", len(points))]
    for pid, (xyz, rgb, error, track) in points.items():
        track = np.asarray(track, "<i4").reshape(-1, 2)
        out += [struct.pack("<Q3d3BdQ", pid, *xyz, *rgb, error, len(track)), track.tobytes()]
    with open(path, "wb") as f:
        f.write(b"".join(out))


def rotation_to_qvec(R):
    """Rotation (3, 3) -> unit quaternion (w, x, y, z), w >= 0 (read_write_model.py::rotmat2qvec)."""
    Rxx, Ryx, Rzx, Rxy, Ryy, Rzy, Rxz, Ryz, Rzz = np.asarray(R, np.float64).flat
    Km = np.array([[Rxx - Ryy - Rzz, 0, 0, 0], [Ryx + Rxy, Ryy - Rxx - Rzz, 0, 0],
                   [Rzx + Rxz, Rzy + Ryz, Rzz - Rxx - Ryy, 0],
                   [Ryz - Rzy, Rzx - Rxz, Rxy - Ryx, Rxx + Ryy + Rzz]]) / 3.0
    eigvals, eigvecs = np.linalg.eigh(Km)
    qvec = eigvecs[[3, 0, 1, 2], np.argmax(eigvals)]
    return -qvec if qvec[0] < 0 else qvec


def qvec_to_rotation(q):
    """Unit quaternion (w, x, y, z) -> rotation matrix (3, 3) (read_write_model.py::qvec2rotmat)."""
    w, x, y, z = q
    return np.array([[1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * z * x + 2 * w * y],
                     [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
                     [2 * z * x - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y]])


def colmap_c2w(image):
    """images.bin stores world-to-camera (R, t) in OpenCV axes, as we do: c2w = [Rᵀ | -Rᵀ t]."""
    R = qvec_to_rotation(image["qvec"])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R.T, -R.T @ image["tvec"]
    return m


def colmap_w2c(c2w):
    """Inverse of colmap_c2w: OpenCV camera-to-world (4, 4) -> (qvec (4,), tvec (3,)) as images.bin stores."""
    R = np.asarray(c2w)[:3, :3].T
    return rotation_to_qvec(R), -R @ np.asarray(c2w)[:3, 3]


def colmap_intrinsics(camera, where):
    """(model, w, h, params) -> K (3, 3) and dist (4,) = OPENCV (k1, k2, p1, p2) at the camera's size.
    SIMPLE_RADIAL (f, cx, cy, k) and RADIAL (f, cx, cy, k1, k2) are OPENCV with the other terms 0 exactly:
    COLMAP's radial term is k1 r² + k2 r⁴ in all three. Fisheye and thin-prism models are refused."""
    model, _, _, p = camera
    if model not in ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"):
        raise ColmapError(f"{where}: camera model {model} is not supported (OPENCV, PINHOLE, SIMPLE_PINHOLE, "
                          f"SIMPLE_RADIAL, RADIAL); undistort with `colmap image_undistorter` and use its dense/ "
                          f"workspace")
    f = p[:4] if model in ("PINHOLE", "OPENCV") else (p[0], p[0], p[1], p[2])  # fx, fy, cx, cy
    dist = {"SIMPLE_RADIAL": (*p[3:4], 0, 0, 0), "RADIAL": (*p[3:5], 0, 0), "OPENCV": p[4:8]}.get(model, (0, 0, 0, 0))
    fx, fy, cx, cy = f
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), np.array(dist, np.float64)


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


def write_colmap_array(path, array):
    """Inverse of read_colmap_array: (H, W) or (H, W, C) -> a COLMAP MVS array file (read_write_dense.py::
    write_array, transcribed)."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    with open(path, "w") as fid:
        fid.write(str(width) + "&" + str(height) + "&" + str(channels) + "&")
    with open(path, "ab") as fid:
        array_trans = np.transpose(array, (1, 0)) if array.ndim == 2 else np.transpose(array, (1, 0, 2))
        data_1d = array_trans.reshape(-1, order="F").tolist()
        fid.write(struct.pack("<" + "f" * len(data_1d), *data_1d))
