"""Each objective learns: on the tiny arithmetic task (``rlvr_helpers.make_arith_data``, the SFT'd tiny policy of
``tests/trainers/test_rlvr_learning.py``), the verifier accuracy after LEARN_STEPS steps of dapo and cispo (GRPO: test_rlvr_learning)
beats a no-update control (GRPO at lr 0: same prompts, same sampling seeds, a policy that never moves).

Measured as ``reward/gen_accuracy`` (every response generated in a step: with DAPO's dynamic sampling the trained
batch is biased towards mixed groups, the generated ones are not) averaged over the last WINDOW steps. Two optimizer
steps per rollout batch, so the second is off-policy and each objective's clipping / IS weight acts. All runs
come from ONE launch (``conftest.objective_runs``). Measured 2026-12-06 on the shared 2 cores: launch 124 s (SFT, 4 x
30 steps, the 10 dynamic-sampling driver steps), 2m12s for this file + the driver test; last-10-step accuracy
grpo 0.203, dapo 0.187, cispo 0.194 against the control's 0.075 (margins 0.11-0.13, threshold MARGIN).
"""

from __future__ import annotations

import pytest
from objectives_helpers import LEARN, LEARN_STEPS
from trainer_helpers import step_records

pytestmark = pytest.mark.slow

WINDOW = 10
MARGIN = 0.05
"""Required gain in mean accuracy over the last WINDOW steps against the control."""


def _acc(recs, steps):
    return sum(recs[s]["reward/gen_accuracy"] for s in steps) / len(steps)


@pytest.mark.parametrize("name", [n for n in LEARN if n != "control"])
def test_objective_beats_the_no_update_control(objective_runs, name):
    root = objective_runs["root"]
    control, recs = step_records(root / "control"), step_records(root / name)
    assert list(recs) == list(range(1, LEARN_STEPS + 1)) and list(control) == list(recs)
    last = range(LEARN_STEPS - WINDOW + 1, LEARN_STEPS + 1)
    got, base = _acc(recs, last), _acc(control, last)
    print(f"{name}: last {WINDOW} steps accuracy {got:.3f} vs control {base:.3f} "
          f"(launch {objective_runs['wall_s']:.0f} s)")
    assert got >= base + MARGIN, f"{name}: accuracy over the last {WINDOW} steps {got:.3f}, control {base:.3f}"
    assert recs[1]["reward/gen_accuracy"] == control[1]["reward/gen_accuracy"]  # same start: the same first batch
