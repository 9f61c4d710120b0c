"""The learning runs of the slow objective tests (``conftest.objective_runs`` runs them, ``test_objectives_learn``
reads them)."""

LEARN_STEPS = 30
"""Steps of each learning run."""
LEARN = {
    "control": {"rlvr.algorithm": "grpo", "optim.lr": "0.0"},
    "dapo": {"rlvr.algorithm": "dapo"},
    "cispo": {"rlvr.algorithm": "cispo"},
}
"""Objective runs of the learning test (the control first): overrides on top of the shared setup. GRPO learns in
``tests/trainers/test_rlvr_learning.py`` and GSPO is left out, to keep ``make test`` under its budget (exploratory
runs, same setup, 2026-12-06: last-10-step accuracy grpo 0.202, gspo 0.176 vs the control's 0.074; all seven
objectives over 4 seeds: ``benchmarks/rl_objectives.md``)."""
