"""Colocated engines over nodes (issue 24, ``rollout.colocated_nodes``): the leaders' prompt split and its failure
report, on two gloo processes that see themselves on two nodes, with a stand-in engine (the RLVR loop runs the real
ones: ``tests/trainers/test_colocated_engines_ppo.py``, ``test_rlvr_engines.py``)."""

from __future__ import annotations

import pytest

from megatron_tulu.rollout.base import Generation, RolloutEngine, SamplingConfig

pytestmark = pytest.mark.timeout(120)


class SeedEchoEngine(RolloutEngine):
    """Answers each prompt ``[p]`` with the token ``p + seed + its index in the call``: what a seeded engine does
    (prompt i of a call is seeded with ``seed + i``), so a wrongly offset share shows in the tokens."""

    def __init__(self, fail: bool):
        self.fail = fail

    def generate(self, prompt_token_ids, sampling):
        if self.fail:
            raise RuntimeError("engine core died")
        return [Generation(i, [[p[0] + sampling.seed + i]], [[0.0]], ["stop"]) for i, p in enumerate(prompt_token_ids)]

    def update_weights(self, named_tensors, metas=None):
        pass


def _leaders_share_prompts(fail_rank: int):
    import torch.distributed as dist

    from megatron_tulu.rollout.colocated_nodes import NodeColocatedEngines, NodeLeaders

    dist.init_process_group("gloo")
    leaders = NodeLeaders.connect(timeout_s=60)
    engines = NodeColocatedEngines(SeedEchoEngine(fail=dist.get_rank() == fail_rank), leaders)
    try:
        if dist.get_rank() == 0:
            gens = engines.generate([[100], [200], [300]], SamplingConfig(seed=5))
            return [(g.prompt_index, g.token_ids[0][0]) for g in gens]
        engines.serve()
        return "served"
    except RuntimeError as e:
        return f"error: {e}"


def test_colocated_nodes_split_prompts_as_one_engine_rlvr():
    """Node 0 generates prompts 0-1, node 1 prompt 2, with the seed and prompt index of its place in the batch."""
    from megatron_tulu.testing import run_distributed

    got = run_distributed(_leaders_share_prompts, 2, args=(-1,), ranks_per_node=1, timeout_s=90)
    assert got == [[(0, 105), (1, 206), (2, 307)], "served"]


def test_colocated_nodes_report_a_failed_share_at_once_rlvr():
    """A node whose engine fails reports it in the gather: rank 0 raises naming that node (it does not wait out
    the timeout), and so does the failing node."""
    from megatron_tulu.testing import run_distributed

    got = run_distributed(_leaders_share_prompts, 2, args=(1,), ranks_per_node=1, timeout_s=90)
    assert got == ["error: colocated generation failed on node 1: RuntimeError: engine core died"] * 2
