"""Issue 24 (RLVR throughput, "no padding"): with ``train.max_tokens_per_microbatch`` the RLVR passes (old logprobs,
reference, values, policy and value training) run on packed THD rows formed by a token budget and balanced over DP
ranks, and a step is the padded step: same losses and gradients.

Fast tests check the row building by hand (positions restart per document, targets stay inside their document, the
flat token order of a packed row); the slow one runs the same synthetic rollouts padded and packed in one 4-rank
launch at TP2 x PP2 (sequence parallel, PPO with a value model), CP2 x DP2 (GRPO, per-sequence loss weights) and
PP2 x VPP2 x DP2 (GRPO, interleaved schedule), two minibatches each, and compares every optimizer step's gradients. It also runs a packed step with every row's
documents merged into one segment (cross-document attention) and checks that it is caught. A missing position reset
is not visible in the model's outputs (RoPE is relative; measured ~1e-6), so the fast tests check positions directly.
"""

from __future__ import annotations

import pytest
import torch

from megatron_tulu.data.packing import packed_attention_mask
from megatron_tulu.data.sampler import IGNORE_INDEX
from megatron_tulu.trainers.rlvr.experience import (
    Experience,
    _agg_weights,
    pack_rows,
    response_rows,
)

# ------------------------------------------------------------------------------------------------------ fast, pure

def test_packed_rows_rlvr_restart_positions_and_keep_targets_in_documents():
    prompts, responses = [[11, 12], [21], [31, 32, 33]], [[13, 14, 15], [22], []]
    rows = pack_rows(prompts, responses, [[0, 1], [2]], pad_id=0, multiple=4)
    a, b = rows
    assert a["input_ids"].tolist() == [[11, 12, 13, 14, 15, 21, 22, 0]]
    assert a["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 0]]  # restart at each document and at the pad
    # the next token inside each response; the last token of a document predicts nothing (not the next document)
    assert a["targets"].tolist() == [[IGNORE_INDEX, 13, 14, 15, IGNORE_INDEX, 22, IGNORE_INDEX, IGNORE_INDEX]]
    assert a["cu_seqlens"] == [[0, 5, 7, 8]]
    assert (a["seqs"], a["num_seqs"], a["useful"], a["computed"]) == ([0, 1], 2, 7, 8)
    assert b["cu_seqlens"] == [[0, 3, 4]] and b["mask"].sum() == 0  # an empty response: a document, no targets
    # pipeline: every row of a call padded to one length (rounded to the multiple), the pad its own segment
    same = pack_rows(prompts, responses, [[0, 1], [2]], pad_id=0, multiple=4, length=7)
    assert [r["computed"] for r in same] == [8, 8] and same[1]["cu_seqlens"] == [[0, 3, 8]]
    assert same[1]["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    with pytest.raises(ValueError):
        pack_rows(prompts, responses, [[0, 1]], pad_id=0, length=4)


def test_packed_rows_rlvr_match_the_padded_rows_per_document():
    """Each document of a packed row reads, predicts and masks exactly what its padded row does."""
    prompts, responses = [[5, 6, 7], [8], [9, 10]], [[1, 2], [3, 4, 5, 6], [7]]
    ids, targets, _ = response_rows(prompts, responses, pad_id=0)
    row = pack_rows(prompts, responses, [[2, 0, 1]], pad_id=0)[0]
    cu = row["cu_seqlens"][0]
    for k, i in enumerate(row["seqs"]):
        a, b = cu[k], cu[k + 1]
        assert row["input_ids"][0, a:b].tolist() == ids[i, : b - a].tolist()
        assert row["targets"][0, a:b].tolist() == targets[i, : b - a].tolist()
        assert row["position_ids"][0, a:b].tolist() == list(range(b - a))


def test_packed_token_budget_rlvr_gathers_token_fields_in_row_order():
    prompts, responses = [[5, 6], [7], [8, 9]], [[1, 2, 3], [4], [5, 6]]
    exp = Experience.rows(*response_rows(prompts, responses, pad_id=0))
    exp.old_logp = torch.tensor([0.1, 0.2, 0.3, 1.1, 2.1, 2.2])  # flat [N]: sequence 0's 3, 1's 1, 2's 2 tokens
    exp.agg_weights = torch.arange(6.0)
    mb = exp.packed_microbatches(pack_rows(prompts, responses, [[0, 2]], pad_id=0))[0]
    assert mb["flat_index"].tolist() == [0, 1, 2, 4, 5]
    assert mb["seq_idx"].tolist() == [0, 0, 0, 1, 1] and mb["num_seqs"] == 2
    assert mb["old_logp"].tolist() == pytest.approx([0.1, 0.2, 0.3, 2.1, 2.2])
    assert mb["agg_weights"].tolist() == [0, 1, 2, 4, 5]
    # the row's targets at its mask, row-major, are these tokens' targets in the same order
    assert mb["targets"][mb["mask"].bool()].tolist() == [1, 2, 3, 5, 6]


def test_packed_token_budget_rlvr_minibatch_row_sets_give_the_range_weights():
    """``_agg_weights`` over row sets (the packed layout's minibatches) equals the row-range version."""
    from megatron_tulu.losses.ppo import agg_weights

    prompts = [[1]] * 6
    responses = [[2] * n for n in (3, 1, 4, 2, 5, 1)]
    exp = Experience.rows(*response_rows(prompts, responses, pad_id=0))
    for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        ranges = _agg_weights(exp, agg, 8, [(0, 2), (2, 6)], None, agg_weights)
        sets = _agg_weights(exp, agg, 8, [[0, 1], [2, 3, 4, 5]], None, agg_weights)
        assert torch.equal(ranges, sets), agg
    # an interleaved row set normalises over its own rows only
    w = _agg_weights(exp, "token_mean", 8, [[0, 2, 4], [1, 3, 5]], None, agg_weights)
    assert w.tolist() == pytest.approx([1 / 12] * 3 + [1 / 4] + [1 / 12] * 4 + [1 / 4] * 2 + [1 / 12] * 5 + [1 / 4])


def test_packed_token_budget_rlvr_splits_bins_for_the_interleaved_schedule():
    from megatron_tulu.trainers.rlvr.loop import _split_bins

    assert _split_bins([[0, 1, 2], [3]], 3) == [[0, 1], [3], [2]]
    assert _split_bins([[0], [1]], 4) == [[0], [1]]  # cannot split single sequences
    assert _split_bins([[0, 1]], 1) == [[0, 1]]


# ------------------------------------------------------------------------------------------ slow: padded vs packed

RESPONSE_LENS = [3, 41, 7, 18, 64, 2, 29, 11]  # 8 sequences; one prompt + response exceeds the budget below
BUDGET = 96


def _rollout(prompts: list[dict], vocab: int) -> dict:
    """Synthetic rollouts (the same on every rank): GRPO groups of 2, rewards that differ within groups."""
    import random

    rng = random.Random(0)
    n = len(RESPONSE_LENS)
    ps = [list(prompts[i // 2]["prompt_ids"]) for i in range(n)]
    rs = [[rng.randrange(4, vocab) for _ in range(k)] for k in RESPONSE_LENS]
    return {"prompts": ps, "responses": rs, "rollout_logp": [[-rng.random() * 3 for _ in r] for r in rs],
            "eos": [i % 3 != 1 for i in range(n)], "correct": [float(i % 2 == (i // 2) % 2) for i in range(n)],
            "timeouts": 0, "gen_s": 0.0, "version": 0, "by_dataset": {}}


def _broken(pack_rows_fn, how: str):
    """A broken packer: ``segments``: each row's documents in ONE attention segment (cross-document attention).
    (``positions``, positions running on over the row, is left to the fast tests: RoPE only sees relative positions
    within a document, so the model's outputs move by ~1e-6, measured here, below any useful tolerance.)"""
    def broken(*args, **kwargs):
        rows = pack_rows_fn(*args, **kwargs)
        for r in rows:
            if how == "segments":  # THD boundaries, or under CP the dense mask built from them
                one = [[0, r["computed"]]]
                if "attn_mask" in r:
                    r["attn_mask"] = packed_attention_mask(one, r["computed"])
                else:
                    r["cu_seqlens"] = one
            else:
                r["position_ids"] = torch.arange(r["computed"]).unsqueeze(0)
        return rows
    return broken


def _steps(jobs: list[tuple[str, list[str], list[tuple[str, int, str | None]]]]) -> dict:
    """Per-rank body: for each ``(layout, overrides, modes)`` set an RLVR driver up once (no engine) and run one
    ``step`` on the synthetic rollouts per mode ``(name, max_tokens_per_microbatch, broken)``. The optimizer steps
    are skipped (gradients recorded instead), so every mode starts from the same weights. Per ``<layout>_<mode>``:
    its metrics and, per optimizer step (policy and value), this rank's gradients
    ({"<model>.<chunk>.<param>": numpy})."""
    from unittest import mock

    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.rlvr import RLVRConfig, loop

    out = {}
    for layout, overrides, modes in jobs:
        driver = loop.RLVRDriver(load_config(RLVRConfig, "rlvr/tiny", overrides))
        driver._start_engine = lambda: None
        driver.setup()
        grads: list[dict] = []
        for label, tr in (("policy", driver.policy), ("value", driver.value)):
            if tr is None:
                continue

            def snapshot(tr=tr, label=label, grads=grads):
                grads.append({f"{label}.{c}.{n}": p.main_grad.detach().float().numpy().copy()
                              for c, chunk in enumerate(tr.model) for n, p in chunk.named_parameters()})
                return True, 0.0, None  # (ok, grad norm, zeros): the weights stay as they were

            tr.optimizer.step = snapshot
        ro = _rollout(driver.task.prompts, driver.task.vocab_size or driver.policy.preset.vocab_size)
        for mode, budget, broken in modes:
            driver.cfg.train.max_tokens_per_microbatch = budget
            grads.clear()
            with mock.patch.object(loop, "pack_rows", _broken(loop.pack_rows, broken) if broken else loop.pack_rows):
                metrics = driver.step(ro, 1e-3)
            out[f"{layout}_{mode}"] = {"metrics": metrics, "grads": list(grads)}
    return out


def _max_rel_diff(a: list[dict], b: list[dict]) -> float:
    assert len(a) == len(b) and all(sorted(x) == sorted(y) for x, y in zip(a, b))
    worst = 0.0
    for x, y in zip(a, b):
        scale = max(float(abs(g).max()) for g in y.values()) or 1.0
        worst = max(worst, max(float(abs(x[k] - g).max()) / scale for k, g in y.items()))
    return worst


@pytest.mark.slow
def test_packed_token_budget_rlvr_matches_padded_at_tp2pp2_cp2_and_vpp2(sft_data, tiny_hf, tmp_path_factory):
    from rlvr_helpers import rlvr_overrides

    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("rlvr_packed")
    layouts = {
        "tp2pp2": {"parallel.tp": 2, "parallel.pp": 2, "model.sequence_parallel": "true", "rlvr.algorithm": "ppo"},
        # DP=2 here: the layouts put different sequences on each DP rank, so compare all-reduced gradients (the
        # distributed optimizer leaves each rank only its own shard reduced)
        "cp2": {"parallel.cp": 2, "rlvr.algorithm": "grpo", "rlvr.samples_per_prompt": 2,
                "rlvr.loss_agg": "seq_mean_token_mean", "parallel.use_distributed_optimizer": "false"},
        # interleaved 1F1B: 4 chunks of one layer over PP=2 x DP=2; packed bins are split to at least pp rows
        "pp2vpp2": {"parallel.pp": 2, "parallel.vpp": 2, "rlvr.algorithm": "grpo", "rlvr.samples_per_prompt": 2,
                    "train.micro_batch_size": 1,
                    "parallel.use_distributed_optimizer": "false"},
    }
    modes = [("padded", 0, None), ("packed", BUDGET, None)]
    jobs = []
    for lay, extra in layouts.items():
        common = {"train.global_batch_size": 8 // int(extra.get("rlvr.samples_per_prompt", 1)),
                  "train.micro_batch_size": 2, "rlvr.num_minibatches": 2, "checkpoint.interval": 0, **extra}
        jobs.append((lay, rlvr_overrides(sft_data, tiny_hf, root / lay, **common),
                     modes + [("segments", BUDGET, "segments")] if lay == "cp2" else modes))
    per_rank = run_distributed(_steps, 4, args=(jobs,), timeout_s=900)
    for rank, out in enumerate(per_rank):
        for lay in layouts:
            pad, pk = out[f"{lay}_padded"], out[f"{lay}_packed"]
            n_opt = 2 * (2 if lay == "tp2pp2" else 1)  # two minibatches x (policy [+ value])
            assert len(pk["grads"]) == n_opt, (lay, len(pk["grads"]))
            for key in ("loss", "value_loss", "clipfrac", "approx_kl"):
                if key in pad["metrics"]:
                    assert pk["metrics"][key] == pytest.approx(pad["metrics"][key], rel=1e-4, abs=1e-6), (rank, lay, key)
            diff = _max_rel_diff(pk["grads"], pad["grads"])
            assert diff < 1e-4, f"rank {rank} {lay}: packed vs padded gradients differ by {diff:.2e} (relative)"
            frac = (pad["metrics"]["throughput/useful_token_frac"], pk["metrics"]["throughput/useful_token_frac"])
            assert 0 < frac[0] < frac[1] <= 1, (lay, frac)
        broken = _max_rel_diff(out["cp2_segments"]["grads"], out["cp2_padded"]["grads"])
        assert broken > 1e-2, f"rank {rank}: merging documents into one segment went unnoticed ({broken:.2e})"
