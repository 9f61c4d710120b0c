"""RLVR driver layouts with TorchEngines (two gloo ranks): TP=2 with and without sequence parallelism, PP=2 x VPP=2
and CP=2 take the same PPO steps with an exact weight sync, and a smaller value model on uneven pipeline stages
resumes. (Split from ``test_rlvr_engines.py``, whose vLLM tests run with the other vLLM and SLURM files, one at a time:
see ``tests/xdist_exclusive.py``.)"""

from __future__ import annotations

import pytest

from rlvr_helpers import make_tiny_reward_model, rlvr_overrides, run_rlvr_jobs as _run, step_records

pytestmark = pytest.mark.slow  # 2-rank launches of several RLVR trainings


def test_tp2_trainer_to_engine_sync_stays_exact(sft_data, tiny_hf, tmp_path):
    run, sp, vpp, cp = tmp_path / "tp2", tmp_path / "tp2_sp", tmp_path / "pp2vpp2", tmp_path / "cp2"
    common = {"parallel.tp": 2, "train.max_steps": 3, "checkpoint.interval": 0}
    _run(2, [("rlvr", rlvr_overrides(sft_data, tiny_hf, run, **common)),
             ("rlvr", rlvr_overrides(sft_data, tiny_hf, sp, **common, **{"model.sequence_parallel": "true"})),
             ("rlvr", rlvr_overrides(sft_data, tiny_hf, vpp, **{**common, "parallel.tp": 1, "parallel.pp": 2,
                                                                "parallel.vpp": 2})),
             ("rlvr", rlvr_overrides(sft_data, tiny_hf, cp, **{**common, "parallel.tp": 1, "parallel.cp": 2}))])
    recs = step_records(run)
    # sequence parallelism (policy, reference and value model with its replicated head); PP=2 x VPP=2 (two model
    # chunks per rank for the policy, the reference and the value model; the sync gathers chunk by chunk); CP=2
    # (every response row split over the two ranks; log-probs and values gathered back, the sync sends one
    # replica): the same PPO steps
    for other in (sp, vpp, cp):
        assert list(step_records(other)) == [1, 2, 3], other.name
        for step, r in step_records(other).items():
            for key in ("loss", "value_loss", "grad_norm", "reward/score", "mismatch/mean_abs_diff"):
                assert abs(r[key] - recs[step][key]) <= 1e-4 * max(1.0, abs(recs[step][key])), (other.name, step, key)
    assert list(recs) == [1, 2, 3]
    for step, r in recs.items():
        assert r["grad_norm"] > 0, step  # the weights really change between syncs
        assert r["mismatch/mean_abs_diff"] < 1e-4, (step, r["mismatch/mean_abs_diff"])
        assert r["mismatch/policy_lag"] == 0


def test_smaller_value_model_on_uneven_pipeline_stages_resumes(sft_data, tiny_hf, tmp_path):
    """A value model smaller than the policy (from a 3-layer, 64-wide reward model beside the 4-layer policy, as
    Tülu 3's 8B value model beside the 405B policy) on the policy's PP=2 ranks: its 3 layers split 1 + 2 (megatron's
    uneven last stage). Stopped after step 2 and resumed (value model and its optimizer from the checkpoint), it
    reproduces the DP=2 run of the same model, where no split is involved, step by step."""
    rm = make_tiny_reward_model(tmp_path / "rm", tiny_hf, hidden_size=64, num_layers=3)
    pp2, dp2 = tmp_path / "pp2", tmp_path / "dp2"
    common = {"rlvr.value_init_hf": rm, "checkpoint.interval": 2}
    _run(2, [("rlvr", rlvr_overrides(sft_data, tiny_hf, pp2, **common, **{"parallel.pp": 2, "train.max_steps": 2})),
             ("rlvr", rlvr_overrides(sft_data, tiny_hf, pp2, **common, **{"parallel.pp": 2, "train.max_steps": 3})),
             ("rlvr", rlvr_overrides(sft_data, tiny_hf, dp2, **common, **{"train.max_steps": 3}))])
    ref, got = step_records(dp2), step_records(pp2)
    assert list(got) == list(ref) == [1, 2, 3]
    lines = [ln for ln in (pp2 / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert len(lines) == 3, "the second run must continue from step 2, not start over"
    assert (pp2 / "checkpoints_value").is_dir()
    for step, r in got.items():
        assert r["value_loss"] > 0 and r["grad_norm"] > 0, step
        for key in ("loss", "value_loss", "grad_norm", "reward/score", "mismatch/mean_abs_diff"):
            assert abs(r[key] - ref[step][key]) <= 1e-4 * max(1.0, abs(ref[step][key])), (step, key, r[key], ref[step][key])
