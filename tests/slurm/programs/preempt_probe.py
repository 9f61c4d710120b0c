"""A stand-in trainer for the preemption test: N deterministic "steps" accumulating a "loss" sum.

First run (SLURM_RESTART_COUNT unset/0): after step PAUSE_AT it writes ready<R> and waits (up to 60 s) in the
step loop for SIGUSR1/SIGTERM; on the signal (megatron_tulu.preemption.PreemptionWatcher) it saves
{step, total} to state<R>.json and exits REQUEUE_EXIT_CODE. A restarted run loads the state and finishes;
final<R>.json then holds the total, which must equal the uninterrupted sum.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from megatron_tulu.preemption import REQUEUE_EXIT_CODE, PreemptionWatcher  # noqa: E402

N, PAUSE_AT = 40, 10


def step_loss(k: int) -> float:
    return 1.0 / (k + 1)


out = Path(sys.argv[1])
rank = int(os.environ["SLURM_PROCID"])
restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
state = out / f"state{rank}.json"
watcher = PreemptionWatcher()
step, total, resumed_from = 0, 0.0, None
if state.exists():
    s = json.loads(state.read_text())
    step, total, resumed_from = s["step"], s["total"], s["step"]
deadline = time.monotonic() + 60
while step < N:
    if watcher.requested():
        state.write_text(json.dumps({"step": step, "total": total, "signal": watcher.signal_name}))
        sys.exit(REQUEUE_EXIT_CODE)
    if step == PAUSE_AT and resumed_from is None:
        (out / f"ready{rank}").touch()
        if time.monotonic() < deadline:  # a long step: wait here for the preemption signal
            time.sleep(0.1)
            continue
    total += step_loss(step)
    step += 1
(out / f"final{rank}.json").write_text(json.dumps({"total": total, "resumed_from": resumed_from,
                                                     "restart": restart}))
