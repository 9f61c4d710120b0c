"""Issue 24 (no padding) for the pair stages: under ``train.max_tokens_per_microbatch`` DPO and the reward model run
each micro-batch as ONE packed row (chosen documents, then rejected ones; positions restart, attention per document),
cut by a token budget and balanced over DP ranks. The layout must not change the numbers: the first step's loss and
every gradient equal the padded run's (fp32 tolerance), on one rank and over DP=2 / TP=2, and the useful-token
fraction rises."""

from __future__ import annotations

import pytest

from packed_pairs_helpers import one_step_grads
from rm_helpers import rm_overrides

pytestmark = pytest.mark.slow  # two process launches (~40 s on 2 cores)
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
    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("packed_pairs")
    budget = {"train.max_tokens_per_microbatch": 256}
    one = {f"{s}_{m}": (s, dict(budget if m == "packed" else {}, **({"dpo.forward_mode": "concatenated"} if s == "dpo" else {})))
           for s in ("dpo", "rm") for m in ("padded", "packed")}
    # DP=2 without the distributed optimizer: each rank's main_grad is then the whole all-reduced gradient (with it,
    # a rank's buffer outside its own shard keeps its local partial sums, which differ when the split differs)
    dp2 = {"parallel.use_distributed_optimizer": "false"}
    two = {"dpo_padded_dp2": ("dpo", dp2), "dpo_packed_dp2": ("dpo", {**budget, **dp2}),
           "rm_padded_tp2": ("rm", {"parallel.tp": 2}), "rm_packed_tp2": ("rm", {"parallel.tp": 2, **budget})}
    r1 = run_distributed(one_step_grads, 1, args=(_jobs(sft_data, tiny_hf, root, one),), timeout_s=600)[0]
    r2 = run_distributed(one_step_grads, 2, args=(_jobs(sft_data, tiny_hf, root, two),), timeout_s=600)
    return r1, r2


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_packed_token_budget_dpo_rm_one_rank_same_step(runs, stage):
    r1, _ = runs
    packed, padded = r1[f"{stage}_packed"], r1[f"{stage}_padded"]
    _same_step(packed, padded, f"{stage} packed vs padded")
    assert all(s[0] == 1 for s in packed["shapes"]) and len(packed["shapes"]) < len(padded["shapes"]) * 4
    frac = "throughput/useful_token_frac"
    assert packed["metrics"][frac] > padded["metrics"][frac] and packed["metrics"][frac] > 0.9


def test_packed_token_budget_dpo_over_dp2_and_rm_over_tp2(runs):
    _, r2 = runs
    for a, b in (("dpo_packed_dp2", "dpo_padded_dp2"), ("rm_packed_tp2", "rm_padded_tp2")):
        for rank in (0, 1):
            _same_step(r2[rank][a], r2[rank][b], f"{a} rank {rank}")
    # DP=2: the ranks split the global batch (no pair twice, none lost); TP=2: both ranks hold the same pairs
    assert sorted(r2[0]["dpo_packed_dp2"]["indices"] + r2[1]["dpo_packed_dp2"]["indices"]) == \
        sorted(r2[0]["dpo_padded_dp2"]["indices"] + r2[1]["dpo_padded_dp2"]["indices"])
    assert r2[0]["rm_packed_tp2"]["indices"] == r2[1]["rm_packed_tp2"]["indices"]
