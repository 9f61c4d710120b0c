"""Issue 24 (no padding) for the pair stages: under ``train.max_tokens_per_microbatch`` DPO and the reward model run
each micro-batch as ONE packed row (chosen documents, then rejected ones; positions restart, attention per document),
cut by a token budget and balanced over DP ranks. The layout must not change the numbers: the first step's loss and
every gradient equal the padded run's (fp32 tolerance), over DP=2, TP=2, PP=2 and CP=2, and the useful-token fraction
rises."""

from __future__ import annotations

import pytest

from packed_pairs_helpers import one_step_grads
from rm_helpers import rm_overrides

pytestmark = pytest.mark.slow  # one 2-rank launch
G = 8


def _jobs(sft_data, tiny_hf, root, cases):
    return [(name, stage, rm_overrides(sft_data, tiny_hf, root / name, **{
        "data.cache_dir": root / "cache", "train.global_batch_size": G, "train.max_steps": 2, **extra}))
            for name, (stage, extra) in cases.items()]


def _same_step(a: dict, b: dict, what: str) -> None:
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5), what
    scale = max(float(abs(g).max()) for g in b["grads"].values())
    assert sorted(a["grads"]) == sorted(b["grads"])
    for k, g in b["grads"].items():
        diff = float(abs(a["grads"][k] - g).max())
        assert diff <= 1e-4 * scale, f"{what}: gradient of {k} differs by {diff} (largest entry {scale})"


@pytest.fixture(scope="module")
def runs(sft_data, tiny_hf, tmp_path_factory):
    """One 2-rank launch: DPO over DP=2 (the packed run balances tokens over the ranks, so the ranks hold other pairs
    than the padded run's contiguous halves) and PP=2, the RM over TP=2 (with sequence parallelism) and CP=2, each padded and packed."""
    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("packed_pairs")
    budget = {"train.max_tokens_per_microbatch": 256}
    # DP and CP without the distributed optimizer: each rank's main_grad is then the whole all-reduced gradient (with
    # it, a rank's buffer outside its own shard keeps its local partial sums, which differ when the split differs)
    dp2 = {"parallel.use_distributed_optimizer": "false", "dpo.forward_mode": "concatenated"}
    layouts = {"dpo_{}_dp2": ("dpo", dp2), "rm_{}_tp2": ("rm", {"parallel.tp": 2, "model.sequence_parallel": "true"}),
               # PP: every micro-batch is a budget-length row (the schedule's fixed p2p shape); CP: the dense
               # document mask of the local spec over two load-balanced chunks per rank
               "dpo_{}_pp2": ("dpo", {"parallel.pp": 2, "dpo.forward_mode": "concatenated"}),
               "rm_{}_cp2": ("rm", {"parallel.cp": 2, "model.impl": "local",
                                    "parallel.use_distributed_optimizer": "false"})}
    cases = {name.format(kind): (stage, {**extra, **(budget if kind == "packed" else {})})
             for name, (stage, extra) in layouts.items() for kind in ("padded", "packed")}
    return run_distributed(one_step_grads, 2, args=(_jobs(sft_data, tiny_hf, root, cases),), timeout_s=600)


@pytest.mark.parametrize("stage, layout", [("dpo", "dp2"), ("rm", "tp2"), ("dpo", "pp2"), ("rm", "cp2")])
def test_packed_token_budget_dpo_rm_same_step_as_padded(runs, stage, layout):
    packed, padded = f"{stage}_packed_{layout}", f"{stage}_padded_{layout}"
    for rank in (0, 1):
        _same_step(runs[rank][packed], runs[rank][padded], f"{packed} rank {rank}")
        assert all(s[0] == 1 for s in runs[rank][packed]["shapes"])  # one packed row per micro-batch
    frac = "throughput/useful_token_frac"
    assert runs[0][packed]["metrics"][frac] > runs[0][padded]["metrics"][frac]
    assert runs[0][packed]["metrics"][frac] > 0.9


def test_packed_token_budget_dpo_split_over_dp_loses_no_pair(runs):
    # DP=2: the ranks split the global batch (no pair twice, none lost); TP=2: both ranks hold the same pairs
    assert sorted(runs[0]["dpo_packed_dp2"]["indices"] + runs[1]["dpo_packed_dp2"]["indices"]) == \
        sorted(runs[0]["dpo_padded_dp2"]["indices"] + runs[1]["dpo_padded_dp2"]["indices"])
    assert runs[0]["rm_packed_tp2"]["indices"] == runs[1]["rm_packed_tp2"]["indices"]
