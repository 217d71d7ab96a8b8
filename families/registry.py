"""The family registry: model_type -> Family, and the one error for a model type that has none.

Run: no entry point; `python -m pytest tests/test_model.py -q`.
"""

from .family import Family
from .internvl import INTERNVL
from .llava import LLAVA_NEXT_VIDEO, LLAVA_ONEVISION
from .qwen import QWEN2_5_VL, QWEN2_VL, QWEN3_VL

FAMILIES = {"qwen2_5_vl": QWEN2_5_VL, "qwen2_vl": QWEN2_VL, "qwen3_vl": QWEN3_VL,
            "llava_next_video": LLAVA_NEXT_VIDEO, "llava_onevision": LLAVA_ONEVISION, "internvl": INTERNVL}
SUPPORTED = tuple(FAMILIES)


def family(config) -> Family:
    """The adapter of a model config (or model_type); one clear error naming the supported families otherwise."""
    kind = getattr(config, "model_type", config)
    if kind not in FAMILIES:
        raise ValueError(f"model type {kind!r} has no visual-token map here; supported: {', '.join(SUPPORTED)}. "
                         f"Add a Family entry to families/ (registry.py).")
    return FAMILIES[kind]
