"""Session fixture for the slow objective tests: ONE single-rank launch (process start-up dominates on 2 cores)
that SFTs the tiny model on the small arithmetic task of ``rlvr_helpers.make_arith_data`` (as
``tests/trainers/test_rlvr_learning.py``) and then runs every RLVR training the objective tests read:

  ``control``                 GRPO with lr 0: the policy never moves (same prompts and sampling seeds as the rest);
  ``dapo`` ``cispo``  each preset (``objectives_helpers.LEARN``), LEARN_STEPS steps, 4 prompts x 16
                              samples, two optimizer steps per batch (so the second is off-policy and each
                              objective's clip / IS weight acts);
  ``ds_ref``                  DAPO (dynamic sampling, overlong buffer), 4 steps, a checkpoint every step;
  ``ds_part``                 the same stopped at 3 (a step with a refill round), then resumed in the same run dir
                              to 4.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))  # the trainer tests' helpers


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    from megatron_tulu.data.synthetic import generate

    root = tmp_path_factory.mktemp("objectives") / "data"
    generate(root, seed=0, scale="ci")
    return root


@pytest.fixture(scope="session")
def tiny_hf(sft_data) -> Path:
    from trainer_helpers import make_tiny_hf

    from megatron_tulu.data.tokenizer import load_tokenizer

    return make_tiny_hf(sft_data.parent / "hf_init", len(load_tokenizer(sft_data / "tokenizer")))


@pytest.fixture(scope="session")
def objective_runs(sft_data, tiny_hf, tmp_path_factory) -> dict:
    """Run dirs (``root / name``) and summaries of the launch described in the module doc, plus its wall time."""
    import time

    from objectives_helpers import LEARN, LEARN_STEPS
    from rlvr_helpers import make_arith_data, rlvr_overrides, rlvr_rank_jobs
    from trainer_helpers import base_overrides

    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("objective_runs")
    data = make_arith_data(sft_data, root / "data", correct_of_10=5)
    sft = base_overrides(data, root / "sft", **{"model.init_hf": tiny_hf, "train.max_steps": 40,
                                                "checkpoint.interval": 0, "checkpoint.export_hf": "true"})
    # test_rlvr_learning's GRPO setup (4 prompts, 12-token responses, lr 1e-4) with groups of 16 (8 learned too
    # slowly to show in 30 steps from this policy's ~10% accuracy) and 2 minibatches
    common = {"rlvr.samples_per_prompt": 16, "train.global_batch_size": 4, "train.micro_batch_size": 4,
              "rlvr.max_new_tokens": 12, "rlvr.num_minibatches": 2, "checkpoint.interval": 0}
    jobs = [("sft", sft)]
    for name, extra in LEARN.items():
        jobs.append(("rlvr", rlvr_overrides(data, root / "sft" / "hf", root / name, **{
            **common, "train.max_steps": LEARN_STEPS, **extra})))
    ds = {**common, "rlvr.algorithm": "dapo", "rlvr.samples_per_prompt": 8, "rlvr.num_minibatches": 1,
          "checkpoint.interval": 1}
    for name, steps in (("ds_ref", 4), ("ds_part", 3), ("ds_part", 4)):
        jobs.append(("rlvr", rlvr_overrides(data, root / "sft" / "hf", root / name,
                                            **{**ds, "train.max_steps": steps})))
    t0 = time.time()
    out = run_distributed(rlvr_rank_jobs, 1, args=(jobs,), timeout_s=900)[0]
    wall = time.time() - t0
    for (_, ov), s in zip(jobs[1:], out[1:]):
        assert "error" not in s, f"run {ov} failed:\n{s.get('traceback')}"
    return {"root": root, "wall_s": wall, "summaries": out}
