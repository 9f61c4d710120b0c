"""Issue 23 (recipe fidelity, SFT): under ``train.packing`` a step holds ``train.global_batch_size`` EXAMPLES (as
Tülu 3's 128 examples per step) and the summed loss is divided by the documents in the global batch, so packing is
only a layout: packed and unpacked runs over the same examples give the same first-step loss and gradient, however
the packed rows are cut into micro-batches or spread over DP ranks (and with pipeline / interleaved schedules, where a
rank pads its packed rows with all-ignored filler rows to fixed-shape micro-batches).

Each case runs ``Trainer.setup`` + one ``data_step`` and snapshots every parameter's reduced gradient
(``main_grad``) just before the optimizer step, in one process launch per world size.
"""

from __future__ import annotations

import pytest

from trainer_helpers import base_overrides

G = 8  # global batch (examples)


def _one_step(jobs: list[tuple[str, list[str]]]) -> dict:
    """Per-rank body: for each ``(name, overrides)`` set a trainer up and run one step; per run: the step's metrics,
    the gradients before the optimizer step ({"<chunk>.<param>": numpy array}), the examples the sampler handed out, the
    dataset size, and this rank's micro-batch count and rows."""
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.fit import Trainer
    from megatron_tulu.trainers.sft import SFTConfig, SFTTask
    from trainer_helpers import snapshot_grads_before_step

    class Recording(SFTTask):
        def microbatches(self, indices, trainer):
            mbs = super().microbatches(indices, trainer)
            self.seen = {"indices": list(indices), "microbatches": len(mbs),
                         "rows": [int(mb["input_ids"].shape[0]) for mb in mbs]}
            return mbs

    out = {}
    for name, overrides in jobs:
        cfg = load_config(SFTConfig, "sft/tiny", overrides)
        task = Recording(cfg)
        tr = Trainer(cfg, task)
        tr.setup()
        grads = snapshot_grads_before_step(tr)
        metrics = tr.data_step()
        out[name] = {"metrics": metrics, "grads": grads, "consumed": tr.sampler.consumed_examples,
                     "num_examples": tr.num_examples, **task.seen}
    return out


def _jobs(sft_data, tiny_hf, root, cases: dict[str, dict]) -> list:
    return [(name, base_overrides(sft_data, root / name, **{
        "model.init_hf": str(tiny_hf), "train.global_batch_size": G, "train.max_steps": 4,
        "checkpoint.interval": 0, **extra})) for name, extra in cases.items()]


def _assert_same_step(a: dict, b: dict, what: str) -> None:
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5), what
    assert a["metrics"]["label_tokens"] == b["metrics"]["label_tokens"], what
    assert sorted(a["grads"]) == sorted(b["grads"]), what
    scale = max(float(abs(g).max()) for g in b["grads"].values())
    for k, g in b["grads"].items():
        diff = float(abs(a["grads"][k] - g).max())
        assert diff <= 1e-4 * scale, f"{what}: gradient of {k} differs by {diff} (largest gradient entry {scale})"


@pytest.fixture(scope="module")
def one_rank(sft_data, tiny_hf, tmp_path_factory) -> dict:
    from megatron_tulu.testing import run_distributed

    cases = {
        "unpacked": {"train.packing": "false", "train.micro_batch_size": 4},
        "packed": {"train.packing": "true", "train.micro_batch_size": 4},
        "packed_mb1": {"train.packing": "true", "train.micro_batch_size": 1},
    }
    jobs = _jobs(sft_data, tiny_hf, tmp_path_factory.mktemp("pack_norm_1"), cases)
    return run_distributed(_one_step, 1, args=(jobs,), timeout_s=600)[0]


def test_packed_step_has_the_unpacked_loss_and_gradient(one_rank):
    """The same G examples, packed (into fewer rows, as one or several micro-batches) or one per row: same loss
    (summed token loss / G documents) and the same gradient."""
    un = one_rank["unpacked"]
    for name in ("packed", "packed_mb1"):
        r = one_rank[name]
        assert sorted(r["indices"]) == sorted(un["indices"]), "both runs must draw the same examples"
        _assert_same_step(r, un, f"{name} vs unpacked")
    m = un["metrics"]
    assert m["loss"] == pytest.approx(m["loss_per_token"] * m["label_tokens"] / G, rel=1e-6)


def test_packed_step_consumes_global_batch_size_examples(one_rank):
    """A packed step of global_batch_size=G takes exactly G examples from the sampler (which indexes examples, so
    the dataset size is the example count, packed or not) and reports G sequences in fewer packed rows."""
    un, pk = one_rank["unpacked"], one_rank["packed"]
    assert pk["num_examples"] == un["num_examples"]
    for r in (un, pk, one_rank["packed_mb1"]):
        assert r["consumed"] == G and len(r["indices"]) == G
        assert r["metrics"]["sequences"] == G
    assert un["metrics"]["packed_rows"] == G
    rows = pk["metrics"]["packed_rows"]
    assert 1 <= rows < G, f"{G} tiny-SFT examples should pack into fewer than {G} rows of 256 tokens, got {rows}"
    assert one_rank["packed_mb1"]["microbatches"] == rows  # micro_batch_size=1: one packed row per micro-batch
    assert pk["microbatches"] == -(-rows // 4)


@pytest.mark.slow
def test_packed_matches_unpacked_over_dp_and_pipeline(sft_data, tiny_hf, tmp_path_factory):
    """Two ranks: DP=2 with 16 examples (each rank packs its 8; here the ranks run different numbers of
    micro-batches in the same step), PP=2 with 16 (the last micro-batch filled with an all-ignored row to the
    pipeline's one shape) and PP=2 x VPP=2 with 8 (packed into one micro-batch, padded with a filler micro-batch up
    to pp for the interleaved schedule): each gives its unpacked twin's loss and gradient, on every rank."""
    from megatron_tulu.testing import run_distributed

    layouts = {  # name: (global batch, unpacked micro-batch, packed micro-batch, extra overrides)
        "dp2": (16, 2, 1, {}),
        "pp2": (16, 4, 2, {"parallel.pp": 2}),
        "pp2vpp2": (8, 4, 4, {"parallel.pp": 2, "parallel.vpp": 2}),
    }
    cases = {}
    for name, (g, mb_un, mb_pk, extra) in layouts.items():
        cases[f"{name}_unpacked"] = {"train.packing": "false", "train.micro_batch_size": mb_un,
                                     "train.global_batch_size": g, **extra}
        cases[f"{name}_packed"] = {"train.packing": "true", "train.micro_batch_size": mb_pk,
                                   "train.global_batch_size": g, **extra}
    jobs = _jobs(sft_data, tiny_hf, tmp_path_factory.mktemp("pack_norm_2"), cases)
    per_rank = run_distributed(_one_step, 2, args=(jobs,), timeout_s=900)
    for rank, out in enumerate(per_rank):
        for name, (g, _, mb_pk, _) in layouts.items():
            pk, un = out[f"{name}_packed"], out[f"{name}_unpacked"]
            _assert_same_step(pk, un, f"rank {rank} {name}: packed vs unpacked")
            assert pk["metrics"]["sequences"] == g and pk["consumed"] == g
            assert pk["metrics"]["packed_rows"] < g
            if name != "dp2":
                assert pk["rows"] == [mb_pk] * pk["microbatches"], f"{name}: pipeline micro-batches of one shape"
        # the cases exercise what they claim (deterministic for the CI synthetic set)
        pp2 = out["pp2_packed"]
        assert pp2["microbatches"] * 2 > pp2["metrics"]["packed_rows"], "pp2: expected a filler row"
        assert out["pp2vpp2_packed"]["microbatches"] == 2 and out["pp2vpp2_packed"]["metrics"]["packed_rows"] <= 4
    dp = [out["dp2_packed"] for out in per_rank]
    assert dp[0]["microbatches"] != dp[1]["microbatches"], "dp2: expected the ranks to pack into different counts"
    assert sorted(dp[0]["indices"] + dp[1]["indices"]) == \
        sorted(per_rank[0]["dp2_unpacked"]["indices"] + per_rank[1]["dp2_unpacked"]["indices"])
