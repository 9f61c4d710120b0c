"""Reward-model stage on the tiny model (CPU, gloo): rm/tiny trains (loss falls, accuracy logged), the separate
forward gives the concatenated one's numbers, the HF export is a ``LlamaForSequenceClassification`` whose scores
(transformers) are the trainer's, and the PPO value model's loader (``rlvr.value_init_hf``) reads it bit-exactly.

All runs start from the same random tiny HF Llama; one single-rank launch, and one 4-rank launch (TP=2 x PP=2)
whose first step and export must agree with TP=1."""

from __future__ import annotations

import json

import pytest
import torch

from dpo_helpers import make_tiny_hf, step_records
from rm_helpers import SCORED_PAIRS, rm_jobs, rm_overrides

STEPS = 8


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory):
    from megatron_tulu.data.synthetic import generate
    from megatron_tulu.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("rm")
    generate(root / "data", seed=0, scale="ci")
    hf = make_tiny_hf(root / "hf_init", len(load_tokenizer(root / "data" / "tokenizer")))

    def ov(name, **extra):
        return rm_overrides(root / "data", hf, root / name, **{"data.cache_dir": root / "cache", "optim.lr": 1e-3,
                                                               **extra})

    return root, ov


@pytest.fixture(scope="module")
def one_rank(setup_dirs):
    from megatron_tulu.testing import run_distributed

    root, ov = setup_dirs

    jobs = {"concat": ("fit+export", ov("concat", **{"train.max_steps": STEPS, "checkpoint.export_hf": "true"})),
            "separate": ("fit", ov("separate", **{"train.max_steps": 1, "rm.forward_mode": "separate"})),
            "concat1": ("fit", ov("concat1", **{"train.max_steps": 1}))}
    out = run_distributed(rm_jobs, 1, args=([jobs[n] for n in jobs],), timeout_s=600)[0]
    return {"root": root, **dict(zip(jobs, out))}


@pytest.mark.slow
def test_rm_trains_and_logs_accuracy(one_rank):
    recs = step_records(one_rank["root"] / "concat")
    assert len(recs) == STEPS
    for r in recs.values():
        assert {"loss", "accuracy", "chosen_score", "rejected_score", "margin"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0
    loss = [r["loss"] for r in recs.values()]
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    evals = [json.loads(line) for line in (one_rank["root"] / "concat" / "eval.jsonl").read_text().splitlines()]
    assert {"eval/accuracy", "eval/loss", "eval/margin"} <= set(evals[-1])


@pytest.mark.slow
def test_separate_forward_matches_concatenated(one_rank):
    a = step_records(one_rank["root"] / "concat1")[1]
    b = step_records(one_rank["root"] / "separate")[1]
    for k in ("loss", "accuracy", "chosen_score", "rejected_score", "grad_norm"):
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    # after the step: Adam's first update is ~lr * sign(grad), so fp32-rounding-level gradient differences of
    # near-zero entries move some weights by a full lr; the scores then agree to ~1e-4, not 1e-6
    torch.testing.assert_close(one_rank["separate"]["scores"], one_rank["concat1"]["scores"], rtol=0, atol=2e-3)


@pytest.mark.slow
def test_export_is_a_sequence_classifier_with_the_trainers_scores(one_rank):
    from transformers import LlamaForSequenceClassification

    export = one_rank["root"] / "concat" / "hf"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and "pad_token_id" in cfg
    index = json.loads((export / "model.safetensors.index.json").read_text())["weight_map"]
    assert "score.weight" in index and "lm_head.weight" not in index
    model = LlamaForSequenceClassification.from_pretrained(str(export), dtype=torch.float32).eval()
    assert model.config.num_labels == 1
    res = one_rank["concat"]
    hf = torch.zeros(SCORED_PAIRS, 2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(SCORED_PAIRS):
            for j, key in enumerate(("chosen", "rejected")):  # one unpadded row: its score is its last token's
                hf[i, j] = model(input_ids=torch.tensor([res[key][i]])).logits[0, 0].double()
    assert res["scores"].abs().max() > 1e-3  # a trained, non-zero head
    torch.testing.assert_close(hf, res["scores"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_value_model_loader_reads_the_export_bit_exactly(one_rank):
    v = one_rank["concat"]["value_loader"]
    assert v["same_names"] and v["mismatched"] == []
    assert tuple(v["score_weight"].shape) == (1, v["preset"]["hidden_size"])


@pytest.fixture(scope="module")
def four_rank(setup_dirs):
    from megatron_tulu.testing import run_distributed

    _, ov = setup_dirs
    job = ("fit+export", ov("tp2pp2", **{"train.max_steps": 1, "parallel.tp": 2, "parallel.pp": 2,
                                         "checkpoint.export_hf": "true"}))
    return run_distributed(rm_jobs, 4, args=([job],), timeout_s=600)[0][0]


@pytest.mark.slow
def test_tp2pp2_matches_tp1_and_exports_the_same_classifier(one_rank, four_rank, setup_dirs):
    """TP=2 x PP=2 (rows padded to seq_length, score head on the last stage, replicated over TP): step 1 (the initial
    model's scores and loss) equals TP=1's; its export (score.weight sent from the last stage) loads in transformers
    and in the value model's loader with this run's scores."""
    from transformers import LlamaForSequenceClassification

    root, _ = setup_dirs
    a, b = step_records(root / "concat1")[1], step_records(root / "tp2pp2")[1]
    for k in ("loss", "accuracy", "chosen_score", "rejected_score", "margin", "grad_norm"):
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    torch.testing.assert_close(four_rank["scores"], one_rank["concat1"]["scores"], rtol=0, atol=2e-3)  # see above
    v = four_rank["value_loader"]
    assert v["same_names"] and v["mismatched"] == []
    model = LlamaForSequenceClassification.from_pretrained(str(root / "tp2pp2" / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        hf = torch.tensor([[model(input_ids=torch.tensor([four_rank[k][i]])).logits[0, 0].item()
                            for k in ("chosen", "rejected")] for i in range(SCORED_PAIRS)], dtype=torch.float64)
    torch.testing.assert_close(hf, four_rank["scores"], rtol=1e-5, atol=1e-5)
