"""Training checkpoints: megatron ``dist_checkpointing`` (sharded, reshardable), written atomically.

Layout under ``run_dir/checkpoints``::

    step_00000010/            model + optimizer (torch_dist), common.pt, and our files:
        trainer_state.json    step, sampler position, scheduler, config digest
        rng_rank{R}.pt        per-rank RNG states
        COMPLETE              written last, after every rank finished (a checkpoint without it is partial)
    latest                    name of the newest COMPLETE checkpoint (replaced atomically, after COMPLETE)

A checkpoint is saved into ``.step_XXXXXXXX.tmp`` and renamed when complete. ``resume=auto`` takes
``latest`` if it validates, else the newest valid older one (each refusal names the path and the reason).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_tulu.checkpoint.hf_io import write_atomic
from megatron_tulu.models import mcore_compat

log = logging.getLogger(__name__)

STEP_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing pieces or disagrees with its metadata."""


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def validate(path: Path) -> dict:
    """Return the trainer state of a complete checkpoint, or raise CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    if not (path / "COMPLETE").exists():
        raise CheckpointError(f"{path}: no COMPLETE marker (the save was interrupted)")
    state_file = path / "trainer_state.json"
    if not state_file.exists():
        raise CheckpointError(f"{path}: trainer_state.json missing")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}/trainer_state.json: corrupt ({e})") from e
    if path.name.startswith(STEP_PREFIX) and int(path.name[len(STEP_PREFIX):]) != state.get("step"):
        raise CheckpointError(f"{path}: directory says step {path.name[len(STEP_PREFIX):]}, metadata says {state.get('step')}")
    if not (path / ".metadata").exists():
        raise CheckpointError(f"{path}: dist_checkpointing .metadata missing (sharded save incomplete)")
    expected = state.get("shard_files", [])
    missing = [f for f in expected if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"{path}: missing shard files {missing[:4]}")
    return state


def find_resume(ckpt_root: Path) -> Path | None:
    """Newest valid checkpoint under ``ckpt_root`` (preferring ``latest``), or None."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return None
    candidates = sorted((p for p in ckpt_root.iterdir() if p.name.startswith(STEP_PREFIX)), reverse=True)
    latest = ckpt_root / "latest"
    if latest.exists():
        name = latest.read_text().strip()
        candidates = [ckpt_root / name] + [c for c in candidates if c.name != name]
    for c in candidates:
        try:
            validate(c)
            return c
        except CheckpointError as e:
            log.warning("refusing checkpoint: %s", e)
    return None


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def _sharded_state(model_chunks, optimizer, sharding: str, is_loading: bool) -> dict:
    model_sd = {}
    for i, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{i}"
        model_sd[key] = getattr(chunk, "module", chunk).sharded_state_dict()
    sd = dict(model_sd)
    if optimizer is not None:
        # the nested {model0: .., model1: ..} dict: flattening it would let the chunks' equal local keys collide
        sd["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata={"distrib_optim_sharding_type": sharding}
        )
    return sd


def save(
    ckpt_root: Path, step: int, model_chunks, optimizer, trainer_state: dict, sharding: str = "fully_reshardable",
    keep_last: int = 2,
) -> Path:
    """Collective: save a complete checkpoint for ``step`` atomically and point ``latest`` at it."""
    from megatron.core import dist_checkpointing

    ckpt_root = Path(ckpt_root)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".{final.name}.tmp"
    if _rank() == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    sd = _sharded_state(model_chunks, optimizer, sharding, is_loading=False)
    dist_checkpointing.save(sd, str(tmp))
    torch.save(_rng_state(), tmp / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        files = sorted(p.name for p in tmp.iterdir() if p.suffix == ".distcp")
        state = dict(trainer_state, step=step, shard_files=files, world_size=dist.get_world_size() if dist.is_initialized() else 1)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        (tmp / "COMPLETE").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        write_atomic(ckpt_root / "latest", final.name + "\n")
        _prune(ckpt_root, keep_last)
    _barrier()
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (0 = all) and drop temp dirs of crashed saves.

    Runs on rank 0 right after a save was renamed into place, so any ``.step_*.tmp`` left is from a save that
    died. Incomplete ``step_*`` dirs are left alone: ``resume=auto`` refuses them by name, and a save of the
    same step replaces them.
    """
    for stale in ckpt_root.glob(f".{STEP_PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last <= 0:
        return
    done = sorted(p for p in ckpt_root.iterdir() if p.name.startswith(STEP_PREFIX) and (p / "COMPLETE").exists())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _step_root(path: Path) -> Path | None:
    """``path`` or ``path/checkpoints`` when it holds ``step_*`` dirs (a checkpoints root or a run dir)."""
    for root in (path, path / "checkpoints"):
        if root.is_dir() and any(p.name.startswith(STEP_PREFIX) for p in root.iterdir()):
            return root
    return None


def resolve(path: str | Path) -> tuple[Path, dict]:
    """A complete step directory and its trainer state from ``path``: the dir itself, or (for a ``checkpoints``
    root, or a run dir holding one) the newest valid checkpoint there. Raises :class:`CheckpointError` naming
    the path."""
    path = Path(path)
    if (path / "trainer_state.json").exists() or path.name.startswith(STEP_PREFIX):
        return path, validate(path)
    root = _step_root(path)
    if root is None:
        raise CheckpointError(f"{path}: not a training checkpoint (no trainer_state.json, no step_* dirs)")
    found = find_resume(root)
    if found is None:
        raise CheckpointError(f"{root}: no complete checkpoint (every step_* dir was refused, see the log)")
    return found, validate(found)


def is_training_checkpoint(path: str | Path) -> bool:
    """True for a step dir, a ``checkpoints`` root or a run dir (what :func:`resolve` accepts)."""
    path = Path(path)
    return (path / "trainer_state.json").exists() or _step_root(path) is not None


def load_model_weights(path: str | Path, model_chunks, backbone_only: bool = False) -> dict:
    """Collective: only the model weights of a training checkpoint (any TP/PP it was saved at), no optimizer and
    no RNG; for starting a new stage from it or exporting it. Returns the checkpoint's trainer state.
    ``backbone_only``: everything but the output layer (a scalar head keeps its own init)."""
    from megatron.core import dist_checkpointing

    path, state = resolve(path)
    sharded = _sharded_state(model_chunks, None, "fully_reshardable", is_loading=True)
    if backbone_only:
        sharded = {k: {n: t for n, t in sd.items() if not n.startswith("output_layer.")} for k, sd in sharded.items()}
    loaded = dist_checkpointing.load(sharded, str(path))
    for i, chunk in enumerate(model_chunks):
        module = getattr(chunk, "module", chunk)
        missing, unexpected = module.load_state_dict(loaded["model" if len(model_chunks) == 1 else f"model{i}"],
                                                     strict=not backbone_only)
        if [k for k in missing if not k.startswith("output_layer.")] or unexpected:
            raise KeyError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]} (model weights)")
    return state


def load(path: Path, model_chunks, optimizer, sharding: str = "fully_reshardable", load_optimizer: bool = True) -> dict:
    """Collective: load model (+ optimizer) from a validated checkpoint at any TP/PP/DP layout.

    Returns the trainer state dict (step, sampler position, ...). RNG states are restored when the
    checkpoint was written by a run with the same world size.
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    state = validate(path)
    if optimizer is not None and load_optimizer:
        mcore_compat.prepare_optimizer_for_load(optimizer)
    sd = _sharded_state(model_chunks, optimizer if load_optimizer else None, sharding, is_loading=True)
    loaded = dist_checkpointing.load(sd, str(path))
    for i, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{i}"
        chunk.load_state_dict(loaded[key], strict=True)
    if optimizer is not None and load_optimizer:
        optimizer.load_state_dict(loaded["optimizer"])
        mcore_compat.after_optimizer_load(optimizer)
    rng_file = path / f"rng_rank{_rank()}.pt"
    world = dist.get_world_size() if dist.is_initialized() else 1
    if rng_file.exists() and state.get("world_size") == world:
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return state
