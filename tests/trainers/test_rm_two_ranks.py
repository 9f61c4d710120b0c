"""Reward model on two gloo ranks, one launch (a launch costs ~10 s on 2 cores): the ``separate`` forward under TP=2
and both forward modes under CP=2 give TP=1 / CP=1's scores and loss; a margin column (``rm.margin_field``) changes
the first step's loss exactly as ``bt_loss(margin=...)`` says; and ``python -m megatron_tulu.checkpoint.convert
mcore-to-hf`` turns an RM training checkpoint (saved at TP=2) into the ``LlamaForSequenceClassification`` the
trainer exports itself.

Every run starts from the same random tiny HF Llama; the TP=1 / CP=1 reference is the DP=2 run ``base``. Each run
records, per training pair, the scores its loss saw (``rm_helpers._recording_task``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpo_helpers import make_tiny_hf, step_records
from rm_helpers import SCORED_PAIRS, rm_jobs, rm_overrides

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STEP1 = ("loss", "accuracy", "chosen_score", "rejected_score", "margin", "grad_norm")


def _margin(line: int) -> int:
    return line % 4  # 0..3: the first step's loss moves well beyond fp32 noise


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from megatron_tulu.data.synthetic import generate
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("rm2")
    generate(root / "data", seed=0, scale="ci")
    hf = make_tiny_hf(root / "hf_init", len(load_tokenizer(root / "data" / "tokenizer")))
    margin_file = root / "pref_margin.jsonl"
    lines = (root / "data" / "pref_train.jsonl").read_text().splitlines()
    margin_file.write_text("".join(json.dumps({**json.loads(t), "margin": _margin(i)}) + "\n"
                                   for i, t in enumerate(lines, start=1)))

    def ov(name, **extra):
        return rm_overrides(root / "data", hf, root / name, **{"data.cache_dir": root / "cache",
                                                               "train.max_steps": 1, **extra})

    jobs = {
        "base": ("fit+record", ov("base")),
        "tp2_separate": ("fit+record", ov("tp2_separate", **{"parallel.tp": 2, "rm.forward_mode": "separate"})),
        "cp2": ("fit+record", ov("cp2", **{"parallel.cp": 2})),
        "cp2_separate": ("fit+record", ov("cp2_separate", **{"parallel.cp": 2, "rm.forward_mode": "separate"})),
        "margin": ("fit+record", ov("margin", **{"rm.margin_field": "margin",
                                                 "data.mixture": f"{{datasets: [{{path: {margin_file}}}]}}"})),
        "ckpt": ("fit", ov("ckpt", **{"train.max_steps": 2, "parallel.tp": 2, "checkpoint.export_hf": "true"})),
    }
    per_rank = run_distributed(rm_jobs, 2, args=(list(jobs.values()),), timeout_s=600)
    out = {"root": root, "margin_file": margin_file}
    for k, name in enumerate(jobs):
        res = dict(per_rank[0][k])
        if "seen" in res:  # step -> pair -> (r_c, r_r, margin), merged over the DP ranks
            res["seen"] = {s: {**per_rank[1][k]["seen"].get(s, {}), **d} for s, d in res["seen"].items()}
        out[name] = res
    return out


def _step1_scores(run: dict) -> tuple[list[int], torch.Tensor]:
    seen = run["seen"][1]
    idx = sorted(seen)
    return idx, torch.tensor([seen[i][:2] for i in idx], dtype=torch.float64)


@pytest.mark.parametrize("name", ["tp2_separate", "cp2", "cp2_separate"])
def test_tp2_separate_and_cp2_match_tp1_cp1_concatenated(runs, name):
    """Step 1 is the initial model on the same global batch: every pair's scores, the loss, the metrics and the
    gradient norm equal the TP=1 / CP=1 concatenated run's (fp32)."""
    a, b = step_records(runs["root"] / "base")[1], step_records(runs["root"] / name)[1]
    for k in STEP1:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    idx_a, sc_a = _step1_scores(runs["base"])
    idx_b, sc_b = _step1_scores(runs[name])
    assert idx_b == idx_a and len(idx_a) == 8  # the whole global batch, seen by the loss on some rank
    torch.testing.assert_close(sc_b, sc_a, rtol=1e-5, atol=1e-5)
    # after the step (Adam's ~lr * sign(grad) moves near-zero-gradient weights by a full lr: ~1e-4 agreement)
    torch.testing.assert_close(runs[name]["scores"], runs["base"]["scores"], rtol=0, atol=2e-3)


def test_margin_column_changes_the_first_step_loss_as_bt_loss_says(runs):
    from megatron_tulu.data.loaders import mix, mixture_from_dict
    from megatron_tulu.losses.rm import bt_loss

    seen = runs["margin"]["seen"][1]
    idx = sorted(seen)
    rc, rr, m = (torch.tensor([seen[i][j] for i in idx], dtype=torch.float64) for j in range(3))
    # the margin each pair carried is its own row's: training row i is the mixture's row i (same seed)
    mixed, _ = mix(mixture_from_dict({"datasets": [{"path": str(runs["margin_file"])}]}), "preference")
    expect = torch.tensor([float(_margin(mixed[i]["_line"])) for i in idx], dtype=torch.float64)
    assert torch.equal(m, expect) and len(set(expect.tolist())) > 1
    logged = step_records(runs["root"] / "margin")[1]["loss"]
    with_margin, _ = bt_loss(rc, rr, margin=expect)
    without, _ = bt_loss(rc, rr)
    assert logged == pytest.approx(float(with_margin), rel=1e-5)
    assert abs(float(with_margin) - float(without)) > 0.1


def test_convert_cli_turns_an_rm_training_checkpoint_into_the_trainers_sequence_classifier(runs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from megatron_tulu.checkpoint.hf_io import HFReader

    run = runs["root"] / "ckpt"
    assert (run / "checkpoints" / "step_00000002").is_dir()
    out = tmp_path / "converted"
    r = subprocess.run([sys.executable, "-m", "megatron_tulu.checkpoint.convert", "mcore-to-hf", "--ckpt", str(run),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["num_labels"] == 1
    assert cfg == json.loads((run / "hf" / "config.json").read_text())
    ours, trainer = dict(HFReader(out).items()), dict(HFReader(run / "hf").items())
    assert "score.weight" in ours and "lm_head.weight" not in ours and sorted(ours) == sorted(trainer)
    for k, t in trainer.items():
        assert torch.equal(ours[k], t), k
    model = AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32).eval()
    res = runs["ckpt"]
    with torch.no_grad():
        hf = torch.tensor([[model(input_ids=torch.tensor([res[side][i]])).logits[0, 0].item()
                            for side in ("chosen", "rejected")] for i in range(SCORED_PAIRS)], dtype=torch.float64)
    assert res["scores"].abs().max() > 1e-3
    torch.testing.assert_close(hf, res["scores"], rtol=1e-5, atol=1e-5)  # the trainer's scores of step 2
