"""The whole recipe (data -> pretrain TP=2 -> SFT -> DPO -> RLVR -> eval) at CI size, through the real entry points."""

import json
import re

import pytest

pytestmark = pytest.mark.slow


def test_demo_ci_profile_produces_every_artifact(tmp_path):
    from megatron_tulu.pipeline import TASKS, run_pipeline

    out = tmp_path / "demo"
    summary = run_pipeline(out, profile="ci", engine="torch")
    for stage in ("pretrain", "sft", "dpo", "rlvr"):
        assert (out / stage / "hf" / "config.json").exists(), stage
        assert (out / stage / "metrics.jsonl").stat().st_size > 0, stage
        assert (out / stage / "checkpoints" / "latest").exists(), stage
        assert list((out / stage / "tb").glob("events.*")), stage
        res = summary["results"][stage]
        for t in TASKS:
            assert 0.0 <= res[t]["accuracy"] <= 1.0 and res[t]["n"] > 0
    # the recipe's other stages: on-policy pairs (prefgen) and the reward model that starts PPO's value model
    report = json.loads((out / "prefgen" / "report.json").read_text())
    assert report["counts"]["prompts"] == 16 and report["judge"]["verifier"]
    assert report["counts"]["pairs"] + len(report["dropped"]) == 16
    assert json.loads((out / "rm" / "hf" / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    assert (out / "rm" / "eval.jsonl").exists() and "rlvr.value_init_hf=" in (out / "logs" / "rlvr.log").read_text()
    table = (out / "results.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| stage")]
    assert [r.split("|")[1].strip() for r in rows] == ["pretrain", "sft", "dpo", "rlvr"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")[1:]]
        assert len(cells) == len(TASKS) + 1 and all(re.fullmatch(r"\d+\.\d", c) for c in cells)
    assert (out / "results.png").stat().st_size > 10_000
    # the demo evaluates every stage with ONE engine, loaded with each stage's weights through update_weights;
    # a fresh engine on the last stage's export must give the same answers
    from megatron_tulu.eval.evaluate import evaluate
    from megatron_tulu.rollout import make_engine

    fresh = evaluate(str(out / "rlvr" / "hf"), TASKS, str(out / "data"), tokenizer=str(out / "data" / "tokenizer"),
                     engine=make_engine("torch", str(out / "rlvr" / "hf")), limit=4)
    for t in TASKS:
        assert fresh[t]["accuracy"] == summary["results"]["rlvr"][t]["accuracy"], t
        assert fresh[t]["example"] == summary["results"]["rlvr"][t]["example"], t
    # a re-run reuses every finished stage (no stage command is launched again)
    before = {p: p.stat().st_mtime for p in out.glob("*/hf/config.json")}
    run_pipeline(out, profile="ci", engine="torch")
    assert before == {p: p.stat().st_mtime for p in out.glob("*/hf/config.json")}
