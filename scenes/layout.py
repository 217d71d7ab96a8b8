"""DL3DV's scene layout and camera convention, shared by the reader (data.py) and every scene writer.

A scene folder holds `transforms.json` (nerfstudio schema: intrinsics, frames[].file_path, OpenGL camera-to-world
`transform_matrix`), `images*/` and, for the depth track source, `depths/<image stem>.npy`.

Convention: nerfstudio/OpenGL cameras look down -z with y up; the code uses OpenCV (x right, y down, z forward).
c2w_cv = c2w_gl · diag(1, -1, -1, 1); the same product converts back.
References: DL3DV-10K (github.com/DL3DV-10K/Dataset); nerfstudio data conventions
(docs.nerf.studio/quickstart/data_conventions.html).
"""

import numpy as np

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # c2w_cv = c2w_gl @ GL_TO_CV (flips camera y, z); its own inverse


def gl_to_cv(c2w):
    """nerfstudio/OpenGL camera (y up, z back) <-> OpenCV (y down, z forward): c2w (..., 4, 4) @ diag(1,-1,-1,1)."""
    return c2w @ GL_TO_CV
