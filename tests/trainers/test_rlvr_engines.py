"""RLVR driver with a TP=2 trainer (two gloo ranks) and with the real vLLM engine.

The rollout logprobs (engine) and the trainer's recomputed logprobs (``mismatch/mean_abs_diff``) must agree at
every step, i.e. after every optimizer step and weight sync: TP shards are gathered to HF names correctly and
the engine loads them.
"""

from __future__ import annotations

import pytest

from megatron_tulu.testing import require_vllm
from rlvr_helpers import make_tiny_reward_model, rlvr_overrides, rlvr_rank_jobs, step_records


def _run(world, jobs, ranks_per_node=None):
    from megatron_tulu.testing import run_distributed

    out = run_distributed(rlvr_rank_jobs, world, args=(jobs,), timeout_s=600, ranks_per_node=ranks_per_node)[0]
    for s in out:
        assert "error" not in s, s.get("traceback")
    return out


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


def _assert_synced(recs, steps, tol=1e-3):
    assert list(recs) == list(range(1, steps + 1))
    for step, r in recs.items():
        # fp32 vLLM (CPU) vs fp32 megatron: different kernels, same weights after each sync
        assert r["mismatch/mean_abs_diff"] < tol, (step, r["mismatch/mean_abs_diff"])
        assert r["sync/probe_max_abs_diff"] < tol, (step, r["sync/probe_max_abs_diff"])
        assert 0 < r["response_len"] <= 16 and r["grad_norm"] > 0


@pytest.mark.vllm
def test_tp2_trainer_to_vllm_tp2_streamed_bucketed_sync(sft_data, tiny_hf, tmp_path):
    """Megatron TP=2 (two gloo ranks) -> one vLLM engine at TP=2 (two workers): the shards are gathered to HF
    names and streamed through ~10 KiB buckets (many per sync) as they arrive; after every optimizer step the
    engine's rollout logprobs and its greedy probe logprobs equal the trainer's."""
    require_vllm()
    run = tmp_path / "tp2_vllm_tp2"
    _run(2, [("rlvr", rlvr_overrides(sft_data, tiny_hf, run, **{
        "parallel.tp": 2, "rlvr.engine": "vllm", "rlvr.engine_tp": 2, "rlvr.engine_dtype": "float32",
        "rlvr.sync_bucket_mb": 0.01, "train.max_steps": 2, "checkpoint.interval": 0}))])
    _assert_synced(step_records(run), 2)


@pytest.mark.vllm
def test_two_vllm_engines_as_ray_actors(sft_data, tiny_hf, tmp_path):
    """``engine_placement=ray``, two vLLM engines in a Ray placement group (a local Ray): the prompts are split
    between them, every sync broadcasts to both engines' workers, and the probe (one prompt per engine) and
    rollout logprobs agree with the trainer after every step."""
    require_vllm()
    run = tmp_path / "ray_vllm"
    _run(1, [("rlvr", rlvr_overrides(sft_data, tiny_hf, run, **{
        "rlvr.engine": "vllm", "rlvr.engine_placement": "ray", "rlvr.num_engines": 2, "rlvr.engine_dtype": "float32",
        "rlvr.engine_timeout_s": 300, "train.max_steps": 2, "checkpoint.interval": 0}))])
    _assert_synced(step_records(run), 2)


@pytest.mark.vllm
def test_vllm_engine_two_steps(sft_data, tiny_hf, tmp_path):
    require_vllm()
    run = tmp_path / "vllm"
    _run(1, [("rlvr", rlvr_overrides(sft_data, tiny_hf, run, **{
        "rlvr.engine": "vllm", "rlvr.engine_dtype": "float32", "train.max_steps": 2, "checkpoint.interval": 0}))])
    recs = step_records(run)
    assert list(recs) == [1, 2]
    for step, r in recs.items():
        # fp32 vLLM (CPU) vs fp32 megatron: different kernels, same weights after each sync
        assert r["mismatch/mean_abs_diff"] < 1e-3, (step, r["mismatch/mean_abs_diff"])
        assert 0 < r["response_len"] <= 16 and r["grad_norm"] > 0


@pytest.mark.vllm
def test_colocated_vllm_engines_on_two_nodes_rlvr(sft_data, tiny_hf, tmp_path):
    """``engine_placement=colocated`` with each of two trainer ranks on a node of its own (on this machine): each
    rank starts its node's vLLM engine, rank 0 sends rank 1 half the prompts and forwards every synced tensor, and
    each node leader hands the buckets to its engine's worker by IPC handle. After every step both engines' rollout
    and probe logprobs equal the trainer's, and each node's call log shows the same turns."""
    import json

    require_vllm()
    run = tmp_path / "colocated_vllm_2_nodes"
    _run(2, [("rlvr", rlvr_overrides(sft_data, tiny_hf, run, **{
        "rlvr.engine": "vllm", "rlvr.engine_placement": "colocated", "rlvr.engine_dtype": "float32",
        "rlvr.sync_bucket_mb": 0.05, "train.max_steps": 2, "checkpoint.interval": 0}))], ranks_per_node=1)
    _assert_synced(step_records(run), 2)
    for log in ("engine_events.jsonl", "engine_events.node1.jsonl"):
        events = [json.loads(line) for line in (run / log).read_text().splitlines()]
        assert [e["call"] for e in events] == ["generate", "sleep", "wake", "update_weights", "generate"] * 2, log
        syncs = [e for e in events if e["call"] == "update_weights"]
        assert all(e["ipc_workers"] == 1 and e["broadcast_workers"] == 0 and e["buckets"] > 1 for e in syncs), log
