"""RLVR driver with the real vLLM engine (TP2 trainer to TP2 engine, Ray actors, colocated over two nodes).

The rollout logprobs (engine) and the trainer's recomputed logprobs (``mismatch/mean_abs_diff``) must agree at
every step, i.e. after every optimizer step and weight sync: TP shards are gathered to HF names correctly and
the engine loads them. The layouts with TorchEngines are in ``test_rlvr_layouts_sync.py`` (this file runs with the
other vLLM and SLURM files, one at a time: only vLLM tests belong here). A TP1 engine on rank 0 (the default
placement) is the TP2 test's path with one worker; vLLM at TP1 is tested in ``tests/rollout``.
"""

from __future__ import annotations

import pytest

from megatron_tulu.testing import python_wrapper, require_vllm
from rlvr_helpers import rlvr_overrides, run_rlvr_jobs as _run, step_records

pytestmark = pytest.mark.slow  # launches with real vLLM engines


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
def test_colocated_vllm_engines_on_two_nodes_rlvr(sft_data, tiny_hf, tmp_path, monkeypatch):
    """``engine_placement=colocated`` with each of two trainer ranks on a node of its own (on this machine): each
    rank starts its node's vLLM engine, rank 0 sends rank 1 half the prompts and forwards every synced tensor, and
    each node leader hands the buckets to its engine's worker by IPC handle. After every step both engines' rollout
    and probe logprobs equal the trainer's, and each node's call log shows the same turns.

    As in the project's image: ``$MT_VLLM_PYTHON`` names another interpreter (here a wrapper of this one), so each
    engine's front-end runs in a child process of it (``rollout.engine_process``) and only the calls and the IPC
    handles cross between the trainer and it (the front-end in the trainer's process is
    ``tests/rollout/test_colocated_vllm_rlvr.py``'s other case)."""
    import json

    require_vllm()
    front_ends = tmp_path / "front_ends.log"  # one line per engine front-end process started
    python = python_wrapper(tmp_path / "vllm-python", f'echo "engine front-end: $$" >> {front_ends}')
    monkeypatch.setenv("MT_VLLM_PYTHON", python)  # the trainer ranks inherit it
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
    assert len(front_ends.read_text().splitlines()) == 2  # one front-end process per node
