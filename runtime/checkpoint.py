"""Training checkpoints: written and read here only (train.py writes them; model.load, probe.py, eval.py and
bench.py read them through model.load).

A checkpoint.pt holds tensors and plain Python values only, and is read with `torch.load(weights_only=True)`:
opening a file someone sent you runs none of its code. A file that needs more than that (a pickled object) is
refused by name before anything in it is used.

    {"format": 2,
     "config": the run's resolved settings (train.Config as a dict: model, objective, layers, r, tau, ...),
     "step": optimizer steps done,
     "weights": {parameter name: tensor} of the trained parameters only (LoRA, heads, or the LLM),
     "optimizer", "scheduler": their state dicts,  "rng": torch's CPU RNG state,
     "probe_before": the untrained model's probe results, or None}

Run: no entry point; tests are tests/test_train.py (resume, signals, refusals).
"""

import os
import pickle

import torch

FORMAT = 2
NAME = "checkpoint.pt"


def find(path: str) -> str | None:
    """The checkpoint file a path names (a .pt file, or a run folder holding checkpoint.pt); None for anything else
    (a stock model folder or an HF id)."""
    inside = os.path.join(path, NAME)
    if os.path.isfile(inside):
        return inside
    return path if path.endswith(".pt") else None


def save(path: str, **record):
    """Write the record atomically (a temporary file, then a rename): a kill mid-save leaves the previous file."""
    tmp = path + ".tmp"
    torch.save({"format": FORMAT, **record}, tmp)
    os.replace(tmp, path)


def read(path: str) -> dict:
    """A checkpoint.pt (or a run folder holding one) -> its dict, without unpickling anything but tensors and plain
    values. Missing, truncated, unsafe and foreign files are ValueErrors (FileNotFoundError) naming the file."""
    path = find(path) or path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no training checkpoint here (train.py writes --out/{NAME})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise ValueError(f"{path}: refused: it holds Python objects other than tensors and plain values, which "
                             f"loading would execute; train.py never writes such a file. Use a checkpoint you trust "
                             f"and that train.py wrote") from None
        raise ValueError(f"{path}: not a readable checkpoint, perhaps truncated ({e})") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable checkpoint, perhaps truncated ({e}); train.py writes it "
                         f"atomically, so rerun or restore the file") from None
    if not isinstance(ckpt, dict) or not {"config", "weights", "step"} <= ckpt.keys():
        raise ValueError(f"{path}: not a train.py checkpoint")
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: a train.py checkpoint of format {ckpt.get('format')}, this code reads format "
                         f"{FORMAT}; train again, or use the code version that wrote it")
    return ckpt


def trained_weights(net: torch.nn.Module, state: dict) -> dict:
    """{name: tensor} of the parameters the optimizer trains, taken from `state` (net's state dict, whole tensors
    however the parameters are held)."""
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    return {n: t for n, t in state.items() if n in trained}


def restore_weights(net: torch.nn.Module, weights: dict, where: str):
    """Copy saved trained parameters into net, refusing any that do not fit it (unknown, reshaped or missing)."""
    own = dict(net.named_parameters())
    unknown = [n for n in weights if n not in own or own[n].shape != weights[n].shape]
    missing = [n for n, p in own.items() if p.requires_grad and n not in weights]
    if unknown or missing:
        raise ValueError(f"{where}: the saved weights do not fit the model rebuilt from its config "
                         f"({len(unknown)} unknown or reshaped, e.g. {unknown[:2]}; {len(missing)} missing, "
                         f"e.g. {missing[:2]})")
    net.load_state_dict(weights, strict=False)
