"""Process groups and parallel layout (like torchtitan's ParallelDims).

Ranks come from torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``) or, when
those are absent, from SLURM (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``/``SLURM_JOB_NODELIST``) via
:func:`env_from_slurm`, the one place that derives them. Every process group is created with a timeout so
that a missing peer raises instead of hanging.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_tulu import platform
from megatron_tulu.models.pipeline_split import PipelineSplit

DEFAULT_TIMEOUT_S = int(os.environ.get("MEGATRON_TULU_DIST_TIMEOUT_S", "600"))


@dataclass(frozen=True)
class ParallelDims:
    """Sizes of the trainer's parallel dimensions, and, once ``init_distributed`` has filled them, this process's
    ranks and process groups (passed explicitly to whoever needs them). ``dp`` is derived: world / (tp * pp * cp)."""

    tp: int = 1
    """Tensor-parallel size (splits heads, MLP and vocab)."""
    pp: int = 1
    """Pipeline-parallel size (splits layers into stages)."""
    cp: int = 1
    """Context-parallel size (splits the sequence; GPU only in practice)."""
    vpp: int = 1
    """Virtual pipeline stages (model chunks) per pipeline rank; > 1 selects the interleaved 1F1B schedule."""
    world: int = 1
    """Total trainer processes."""
    rank: int = 0
    """This process's global rank (filled by ``init_distributed``, like every field below)."""
    dp_rank: int = 0
    """Data-parallel rank (which share of a global batch this process trains on)."""
    tp_rank: int = 0
    """Tensor-parallel rank."""
    cp_rank: int = 0
    """Context-parallel rank."""
    is_last_stage: bool = True
    """This process holds the last pipeline stage (where the losses are computed)."""
    dp_group: object = dataclasses.field(default=None, compare=False, repr=False)
    """Process group over the data-parallel replicas of this rank (None before ``init_distributed``)."""

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp * self.cp)

    @property
    def reports_results(self) -> bool:
        """The one rank per model replica that reports the last stage's per-micro-batch results (TP and CP peers
        hold the same, replicated, losses and metrics)."""
        return self.is_last_stage and self.tp_rank == 0 and self.cp_rank == 0

    def all_reduce_dp(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` in place over the data-parallel replicas (bounded by the group's timeout) and return it."""
        if self.dp > 1:
            dist.all_reduce(t, group=self.dp_group)
        return t

    def validate(self) -> None:
        """Raise ValueError naming the field when the sizes do not tile the world."""
        for name in ("tp", "pp", "cp", "vpp", "world"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        model = self.tp * self.pp * self.cp
        if self.world % model:
            raise ValueError(
                f"world size {self.world} is not divisible by tp*pp*cp = {self.tp}*{self.pp}*{self.cp} = {model}"
            )
        PipelineSplit(pp=self.pp, vpp=self.vpp).check_sizes()


def _expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist like ``node[01-03,7],gpu5`` without needing ``scontrol``."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.match(r"^(.*?)\[([^\]]+)\](.*)$", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-")
                for i in range(int(lo), int(hi) + 1):
                    hosts.append(f"{prefix}{str(i).zfill(len(lo))}{suffix}")
            else:
                hosts.append(f"{prefix}{r}{suffix}")
    return hosts


def env_from_slurm(environ: dict | None = None, port: int | None = None) -> dict[str, str]:
    """torch.distributed env vars derived from SLURM's. Returns only what is missing from ``environ``.

    MASTER_ADDR is the first node of the allocation; MASTER_PORT is derived from the job id (so that two
    jobs on one node do not collide) unless given.
    """
    env = dict(os.environ if environ is None else environ)
    if "SLURM_PROCID" not in env:
        return {}
    out: dict[str, str] = {}
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
    try:
        first = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        first = _expand_nodelist(nodes)[0]
    defaults = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "MASTER_ADDR": first,
        "MASTER_PORT": str(port or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
    }
    for k, v in defaults.items():
        if k not in env:
            out[k] = v
    return out


def init_distributed(dims: ParallelDims | None = None, timeout_s: int = DEFAULT_TIMEOUT_S) -> ParallelDims:
    """Initialise torch.distributed (from torchrun or SLURM env) and megatron's model-parallel groups.

    A single process without any launcher env runs as world size 1 on a free local port.
    """
    os.environ.update(env_from_slurm())
    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    platform.setup()
    world = int(os.environ["WORLD_SIZE"])
    dims = dims or ParallelDims(world=world)
    if dims.world != world:
        dims = ParallelDims(tp=dims.tp, pp=dims.pp, cp=dims.cp, vpp=dims.vpp, world=world)
    dims.validate()
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=platform.backend(),
            rank=int(os.environ["RANK"]),
            world_size=world,
            timeout=timeout,
        )
    from megatron.core import parallel_state as ps

    from megatron_tulu.models.mcore_compat import check_version

    check_version()  # the workarounds in mcore_compat were written for the pinned release
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=dims.tp,
        pipeline_model_parallel_size=dims.pp,
        context_parallel_size=dims.cp,
        virtual_pipeline_model_parallel_size=dims.vpp if dims.vpp > 1 else None,
        distributed_timeout_minutes=max(1, timeout_s // 60),
    )
    seed_model_parallel_rng()
    return dataclasses.replace(
        dims, rank=dist.get_rank(), dp_rank=ps.get_data_parallel_rank(), tp_rank=ps.get_tensor_model_parallel_rank(),
        cp_rank=ps.get_context_parallel_rank(), is_last_stage=ps.is_pipeline_last_stage(),
        dp_group=ps.get_data_parallel_group(),
    )


def seed_model_parallel_rng(seed: int = 1234) -> None:
    """Seed megatron's model-parallel RNG tracker (TP-sharded weight init, dropout) as every run starts."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port that is free now and below the kernel's ephemeral range, so that no outgoing connection (gloo's,
    NCCL's, Ray's) can take it in the time before a TCPStore binds it. A port the kernel hands out for bind(0) is
    in that range: one test launch re-binding its rendezvous port per job lost it to another process's connection
    (EADDRINUSE). Falls back to bind(0) when no such port is found."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    pick = random.SystemRandom()  # not the global RNG: tests seed it, and two processes must not pick alike
    for _ in range(64):
        # above Ray's worker ports (10002-19999 by default), below the ephemeral range
        port = pick.randint(20000, low - 1) if low > 21000 else pick.randint(1024, 65535)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable object from ``src`` to all ranks (no-op on one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
