"""Preemption: SIGTERM / SIGUSR1 (SLURM's warning signal) ask the trainer to checkpoint and exit.

The handler only sets a flag; the training loop checks :meth:`PreemptionWatcher.requested` at step boundaries
(agreed across ranks so that every rank stops at the same step), saves, and exits with
:data:`REQUEUE_EXIT_CODE`. The SLURM scripts requeue the job when they see that code.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

REQUEUE_EXIT_CODE = 75
"""Exit code meaning "checkpointed after a preemption signal; requeue me" (EX_TEMPFAIL)."""


class PreemptionWatcher:
    """Installs SIGTERM/SIGUSR1 handlers; ``requested()`` is True on every rank once any rank got one."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self._flag = False
        self.signal_name: str | None = None
        self._previous = {}
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a Ray actor thread)
                pass

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self._flag = True
        self.signal_name = signal.Signals(signum).name

    def requested(self) -> bool:
        """Collective when distributed: every rank must call it at the same step."""
        flag = torch.tensor([1.0 if self._flag else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            from megatron_tulu import platform

            flag = flag.to(platform.device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)


def exit_on_preemption(label: str, kept: str):
    """For work whose progress is on disk in finished pieces (prefgen's shard files) and that has no step to finish:
    SIGTERM/SIGUSR1 write one line (``label``, the signal, ``kept``: what the rerun resumes from) and end the process
    at once with :data:`REQUEUE_EXIT_CODE`, losing only the piece in flight. It exits from the handler, without
    unwinding: an engine call may be running in another thread, and unwinding would run cleanups (an engine's
    shutdown) under it, whose failure would replace the exit code. Returns a function that restores the previous
    handlers."""

    def _exit(signum, frame) -> None:  # noqa: ARG001
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the main thread may be inside a write to it
            pass
        os.write(2, f"{label} {signal.Signals(signum).name}: stopping; {kept}; exiting with "
                    f"{REQUEUE_EXIT_CODE}\n".encode())
        os._exit(REQUEUE_EXIT_CODE)

    previous = {sig: signal.signal(sig, _exit) for sig in PreemptionWatcher.SIGNALS}
    return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]
