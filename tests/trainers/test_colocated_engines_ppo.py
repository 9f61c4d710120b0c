"""``rlvr.engine_placement=colocated`` in the RLVR loop (issue 24): PPO on two gloo trainer ranks with one engine
per rank (two TorchEngines in rank 0's process, the CPU stand-in for an engine worker on each trainer GPU).

The colocated engines split each step's prompts, the first chunk's seed offset by its start, so they sample what
the one local engine samples: with the same seed the two runs take the same optimizer steps. The engines' call
log shows the turn-taking: generate, sleep while the trainer steps, wake, weight sync, probe check.

The same run with each rank on a node of its own (two "nodes" on this machine): each node's first rank hosts that
node's engine, rank 0 sends the other node its share of the prompts and each synced tensor
(``rollout.colocated_nodes``), and the steps are again the local engine's.

PPO rather than GRPO: the tiny random policy never ends a response with EOS here, so every response gets the same
non-EOS reward, GRPO's group advantages are all 0 and its weights would not move between syncs; PPO's value
baseline and per-token KL give non-zero advantages, so each sync carries new weights."""

from __future__ import annotations

import json

import pytest

from rlvr_helpers import rlvr_overrides, run_rlvr_jobs, step_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # three launches, five RLVR trainings


def test_colocated_ppo_equals_local_engine_and_takes_turns(sft_data, tiny_hf, tmp_path):
    local, coloc = tmp_path / "local", tmp_path / "colocated"
    common = {"rlvr.algorithm": "ppo", "train.max_steps": 2, "checkpoint.interval": 0}
    jobs = [("rlvr", rlvr_overrides(sft_data, tiny_hf, local, **common)),
            ("rlvr", rlvr_overrides(sft_data, tiny_hf, coloc, **common, **{"rlvr.engine_placement": "colocated"}))]
    run_rlvr_jobs(2, jobs, timeout_s=900)
    want, got = step_records(local), step_records(coloc)
    assert list(got) == list(want) == [1, 2]
    for step, r in got.items():
        assert r["grad_norm"] > 0 and r["mismatch/mean_abs_diff"] < 1e-4, step  # the sync reached both engines
        for key in ("loss", "value_loss", "grad_norm", "reward/score", "response_len", "mismatch/mean_abs_diff",
                    "sync/probe_max_abs_diff"):
            assert r[key] == pytest.approx(want[step][key], rel=1e-6, abs=1e-7), (step, key)
    events = [json.loads(line) for line in (coloc / "engine_events.jsonl").read_text().splitlines()]
    per_step = ["generate", "sleep", "wake", "update_weights", "generate"]  # rollout, train asleep, sync, probe
    assert [e["call"] for e in events] == per_step * 2
    rollouts = [e for e in events if e["call"] == "generate" and e["prompts"] == 4]
    assert len(rollouts) == 2 and all(e["chunks"] == [[0, 2], [2, 4]] for e in rollouts)  # 2 prompts per engine
    assert not (local / "engine_events.jsonl").exists()

    # Rank 1 on a node of its own: its engine is started there. With PP2, rank 1 holds pipeline stage 2: it sends
    # its part of the gather to rank 0 while it also receives every tensor rank 0 forwards.
    nodes, pp2 = tmp_path / "colocated_2_nodes", tmp_path / "colocated_2_nodes_pp2"
    jobs = [("rlvr", rlvr_overrides(sft_data, tiny_hf, d, **common, **{"rlvr.engine_placement": "colocated"}, **more))
            for d, more in ((nodes, {}), (pp2, {"parallel.pp": 2}))]
    run_rlvr_jobs(2, jobs, ranks_per_node=1)
    assert list(step_records(pp2)) == [1, 2]
    for step, r in step_records(pp2).items():
        assert r["mismatch/mean_abs_diff"] < 1e-4 and r["sync/probe_max_abs_diff"] < 1e-4, step
        assert r["loss"] == pytest.approx(want[step]["loss"], rel=1e-4, abs=1e-6), step  # PP2 vs DP2: sums reorder
    got = step_records(nodes)
    assert list(got) == [1, 2]
    for step, r in got.items():
        assert r["mismatch/mean_abs_diff"] < 1e-4, step  # both nodes' engines hold the synced weights
        for key in ("loss", "value_loss", "grad_norm", "reward/score", "response_len", "sync/probe_max_abs_diff"):
            assert r[key] == pytest.approx(want[step][key], rel=1e-6, abs=1e-7), (step, key)
    for log in ("engine_events.jsonl", "engine_events.node1.jsonl"):  # one call log per node, the same turns
        events = [json.loads(line) for line in (nodes / log).read_text().splitlines()]
        assert [e["call"] for e in events] == per_step * 2, log
        assert all(e["chunks"] == [[0, 2]] for e in events if e["call"] == "generate" and e["prompts"] == 2), log
        assert sum(e["call"] == "generate" and e["prompts"] == 2 for e in events) == 2, log  # half of each rollout


def test_colocated_ppo_on_two_nodes_of_tp2_pp2(sft_data, tiny_hf, tmp_path):
    """Four ranks, two per node, TP2 x PP2: node 1 holds pipeline stage 2, its leader (rank 2) sends its TP-gathered
    stage to rank 0 while it receives every tensor rank 0 forwards, and its other rank (3) only takes part in the
    TP gathers; each node hosts two engines. Both nodes' engines hold the synced weights after every step."""
    run = tmp_path / "colocated_2x2"
    job = ("rlvr", rlvr_overrides(sft_data, tiny_hf, run, **{"rlvr.algorithm": "ppo", "train.max_steps": 2,
                                                             "checkpoint.interval": 0, "parallel.tp": 2,
                                                             "parallel.pp": 2, "rlvr.engine_placement": "colocated"}))
    run_rlvr_jobs(4, [job], ranks_per_node=2)
    recs = step_records(run)
    assert list(recs) == [1, 2]
    for step, r in recs.items():
        assert r["grad_norm"] > 0 and r["mismatch/mean_abs_diff"] < 1e-4 and r["sync/probe_max_abs_diff"] < 1e-4, step
    for log in ("engine_events.jsonl", "engine_events.node1.jsonl"):
        syncs = [json.loads(line) for line in (run / log).read_text().splitlines()]
        assert [e["tensors"] for e in syncs if e["call"] == "update_weights"] == [39, 39], log  # every tensor, twice
