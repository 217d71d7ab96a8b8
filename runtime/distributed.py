"""The processes of a torchrun job, one place: which rank and device this process is, and how the model is spread
over the processes: DDP (a whole copy of weights, gradients and AdamW states on every process) or FSDP2 (PyTorch's
`fully_shard`: each decoder layer, each vision block, the correspondence heads and then the model sharded over
the processes, the ZeRO-3 layout, with no engine outside PyTorch).

    torchrun --nproc_per_node 8 train.py ... --engine fsdp2          # one node
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py ... --engine fsdp2

Devices come from LOCAL_RANK (NCCL on GPUs, gloo on CPUs); files are written by rank 0 only. When one rank fails,
torchrun ends the others (they would otherwise wait in a collective), so each error is raised where it happens,
with its message.
References: PyTorch FSDP2 (pytorch.org/docs/stable/distributed.fsdp.fully_shard.html), torchtitan docs/fsdp.md.
"""

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

ENGINES = ("ddp", "fsdp2")


@dataclass
class Env:
    distributed: bool  # launched by torchrun (RANK set)
    rank: int
    world: int
    device: str
    engine: str = "ddp"

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.distributed and self.engine == "fsdp2"

    def barrier(self):
        if self.distributed:
            dist.barrier()


def free_port() -> int:
    """A free TCP port on this host, for a one-node torchrun's rendezvous (`--master_port`) in tests and bench.py."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(engine: str = "ddp") -> Env:
    """This process: torchrun's (RANK set; device from LOCAL_RANK) or a single one (cuda if present, else cpu)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return Env(False, 0, 1, "cuda" if torch.cuda.is_available() else "cpu", engine)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(device)
    return Env(True, dist.get_rank(), dist.get_world_size(), device, engine)


def process_device(requested: str | None, env: Env) -> str:
    """This process's device for inference: `requested` (a --device flag) or init()'s default in a single process;
    under torchrun the LOCAL_RANK device init() chose, which a --device of another type contradicts."""
    if not env.distributed:
        return requested or env.device
    if requested and requested.split(":")[0] != env.device.split(":")[0]:
        raise ValueError(f"--device {requested} under torchrun: each process takes its device from LOCAL_RANK "
                         f"({env.device} here); drop --device")
    return env.device


def check_device_map(device_map: str | None, env: Env):
    """--device-map auto spreads one model over every GPU its process sees, so two processes of a node would
    share their GPUs: under torchrun it takes one process per node (a model larger than one GPU, on many nodes)."""
    if device_map and env.distributed and int(os.environ.get("LOCAL_WORLD_SIZE", env.world)) > 1:
        raise ValueError(f"--device-map {device_map} spreads one model over all GPUs of its node, but torchrun "
                         f"started {os.environ.get('LOCAL_WORLD_SIZE', env.world)} processes per node: use "
                         "--nproc_per_node 1 with it, or one model copy per GPU without --device-map")


def gather(obj, env: Env) -> list | None:
    """Every rank's `obj` (any picklable Python object) on rank 0, in rank order; None on the other ranks; [obj] in
    a single process. How the data-parallel eval and probe bring their results to the one writer."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world if env.master else None
    dist.gather_object(obj, out, dst=0)  # NCCL: through the current device, which init() set
    return out


def broadcast(obj, env: Env):
    """Rank 0's `obj` on every rank: what rank 0 alone read (the files it writes), so no other rank opens them and
    nothing assumes the ranks share a file system."""
    if not env.distributed:
        return obj
    box = [obj if env.master else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def vision_blocks(vlm: nn.Module) -> list[nn.Module]:
    """The blocks of the vision tower: the longest ModuleList inside it (Qwen `visual.blocks`, CLIP / SigLIP
    `encoder.layers`). transformers' _no_split_modules cannot say it: LLaVA's lists no vision block."""
    tower = next(m for n, m in vlm.named_modules() if n.endswith(("visual", "vision_tower", "vision_model")))
    lists = [m for m in tower.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard(vlm: nn.Module, decoder_layers: nn.ModuleList, heads: nn.Module | None, dtype: torch.dtype, env: Env,
          top: int | None = None):
    """FSDP2 in place: each decoder layer and vision block its own unit, then the heads (a root of their own, as the
    hooks call them inside the layers' forward) and the stock model. Parameters are all-gathered in `dtype` for
    compute (the frozen weights are stored in it; trained ones stay float32 shards) and gradients reduced in
    float32. Build the heads before sharding: their SVD initialisation reads the whole W_Q."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(env.device.split(":")[0], (env.world,))
    policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32)
    for i, block in enumerate(decoder_layers):
        # The top supervised layer: on a geometry item no gradient reaches its output (the loss reads only its q and
        # k), so FSDP's pre-backward gather never runs for it; its weights stay gathered from forward to backward.
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i != top)
    for block in vision_blocks(vlm):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    if heads is not None:
        fully_shard(heads, mesh=mesh, mp_policy=policy)
    fully_shard(vlm, mesh=mesh, mp_policy=policy)


def full_state(net: nn.Module, opt: torch.optim.Optimizer, env: Env) -> tuple[dict, dict]:
    """(every parameter and buffer as a whole tensor, the optimizer state keyed by parameter name) on rank 0, from
    the shards; without sharding, the plain state dicts."""
    if not env.sharded:
        return net.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(net, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer(net: nn.Module, opt: torch.optim.Optimizer, state: dict, env: Env):
    """The saved optimizer state into `opt` (after sharding: each rank keeps its shards)."""
    if not env.sharded:
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    # strict=False: a parameter no loss has reached yet (the top supervised layer's v_proj, which geometry items
    # never use) has no AdamW state to restore, as in a run that was never interrupted
    set_optimizer_state_dict(net, opt, state, options=StateDictOptions(full_state_dict=True, strict=False))


@contextmanager
def gradient_sync(model: nn.Module, env: Env, sync: bool):
    """Around one micro-step's forward and backward: gradients are reduced across processes only when `sync` (the
    last micro-step of an optimizer step); the others accumulate locally."""
    if env.sharded:
        from torch.distributed.fsdp import FSDPModule
        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.set_requires_gradient_sync(sync, recurse=False)
        yield
    elif env.distributed and not sync:
        with model.no_sync():
            yield
    else:
        yield
