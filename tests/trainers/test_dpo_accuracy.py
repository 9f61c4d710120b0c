"""End to end on the tiny model: SFT, then Tülu 3 dpo_norm DPO from the SFT export; the implicit-reward
preference accuracy on HELD-OUT synthetic pairs (prompts disjoint from training) rises well above chance.

Data: the ``--scale small`` synthetic suite, subsets (960 SFT conversations, 1920 training pairs, all 300
held-out pairs) so the run fits a couple of minutes on 2 cores. The rejected answers are near-misses (an off-by-one
arithmetic slip, one capital letter, an unclosed JSON object, one bullet too many ...), so rising held-out
accuracy means the policy learned what separates them, not the particular pairs.
"""

from __future__ import annotations

import pytest

from dpo_helpers import LN2, dpo_overrides, eval_records, sft_then_dpo, step_records

pytestmark = pytest.mark.slow

SFT_STEPS, DPO_STEPS, DPO_LR = 80, 60, 1e-3
N_TRAIN, N_EVAL, DPO_BATCH = 1920, 300, 32
# Chance is 0.5; with 300 held-out pairs one binomial standard deviation at chance is ~0.029, so this is
# > 3 sigma above chance. 40 SFT steps on 480 conversations + 960 pairs gave 0.597 (now deterministic: mixture
# rows are chosen by file name); the held-out gain needs the data and a better SFT start, so keep these sizes.
MIN_ACCURACY = 0.6


def _mix(path, count) -> str:
    return f"{{datasets: [{{path: {path}, count: {count}}}]}}"


def test_heldout_preference_accuracy_rises(tmp_path):
    from megatron_tulu.data.synthetic import generate
    from megatron_tulu.testing import run_distributed

    data = tmp_path / "data"
    generate(data, seed=0, scale="small")
    sft_dir, dpo_dir = tmp_path / "sft", tmp_path / "dpo"
    # data.add_bos=true: the sizes above were tuned with a BOS first (the default before data.add_bos existed); the
    # Tülu 3 default (no BOS) gave 0.58 on this borderline setup. What is tested is DPO's held-out gain, not BOS.
    common = {"data.root": data, "data.cache_dir": tmp_path / "cache", "logging.progress_bar": "false",
              "logging.tensorboard": "false", "data.add_bos": "true"}
    sft = [f"{k}={v}" for k, v in {**common, "run_dir": sft_dir, "train.max_steps": SFT_STEPS,
                                    "checkpoint.interval": 0, "data.mixture": _mix(data / "sft_train.jsonl", 960)}.items()]
    dpo = dpo_overrides(data, sft_dir / "hf", dpo_dir, **{
        "data.cache_dir": tmp_path / "cache", "data.add_bos": "true", "train.max_steps": DPO_STEPS, "optim.lr": DPO_LR,
        "train.global_batch_size": DPO_BATCH, "data.mixture": _mix(data / "pref_train.jsonl", N_TRAIN),
        "data.eval_mixture": _mix(data / "pref_eval.jsonl", N_EVAL)})
    run_distributed(sft_then_dpo, 1, args=(sft, dpo), timeout_s=900)

    ev = eval_records(dpo_dir)
    before, after = ev[0], ev[DPO_STEPS]
    # before any DPO step the policy IS the reference: no preference either way
    assert before["eval/loss"] == pytest.approx(LN2, abs=1e-6) and before["eval/accuracy"] == 0.0
    assert after["eval/accuracy"] >= MIN_ACCURACY, ev
    assert after["eval/margin"] > 0 and after["eval/loss"] < LN2 - 0.03, ev
    recs = step_records(dpo_dir)
    first = sum(r["loss"] for r in list(recs.values())[:5]) / 5
    last = sum(r["loss"] for r in list(recs.values())[-5:]) / 5
    assert last < first - 0.05, (first, last)
