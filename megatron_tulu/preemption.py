"""Preemption: SIGTERM / SIGUSR1 (SLURM's warning signal) ask the trainer to checkpoint and exit.

The handler only sets a flag; the training loop checks :meth:`PreemptionWatcher.requested` at step boundaries
(agreed across ranks so that every rank stops at the same step), saves, and exits with
:data:`REQUEUE_EXIT_CODE`. The SLURM scripts requeue the job when they see that code.
"""

from __future__ import annotations

import signal

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


class PreemptionSignal(BaseException):
    """SIGTERM/SIGUSR1, raised in the main thread by the handlers :func:`raise_on_preemption` installs. A
    ``BaseException``, so that an ``except Exception`` around an engine call does not take it for an engine error."""


def raise_on_preemption() -> None:
    """For work whose progress is already on disk in finished pieces (prefgen's shard files), which has no step to
    finish: SIGTERM/SIGUSR1 raise :class:`PreemptionSignal` at once, losing only the piece in flight."""

    def _raise(signum, frame) -> None:  # noqa: ARG001
        raise PreemptionSignal(signal.Signals(signum).name)

    for sig in PreemptionWatcher.SIGNALS:
        signal.signal(sig, _raise)
