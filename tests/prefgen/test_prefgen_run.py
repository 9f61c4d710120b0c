"""A prefgen run on tiny random models: the LLM-judge path with vLLM structured output (so a random judge still
emits scores), the lenient path without it (replies that do not parse are dropped and counted), the verifier path,
and bad input failing before any engine starts."""

from __future__ import annotations

import io
import json
import re
import signal

import pytest

from megatron_tulu.config import load_config
from megatron_tulu.data.loaders import DataFileError, read_rows
from megatron_tulu.prefgen.config import PrefGenConfig
from megatron_tulu.prefgen.judge import SCORE_REGEX
from megatron_tulu.prefgen.run import RunFiles, Worker, read_jsonl
from megatron_tulu.testing import require_vllm
from prefgen_helpers import gsm_rows, make_model, overrides, sft_rows, write_jsonl


def _run(tmp_path, prefgen_models, kind="sft", judge=True, n_prompts=6, **extra):
    tok, pool, policy = prefgen_models
    rows = sft_rows(n_prompts) if kind == "sft" else gsm_rows(n_prompts)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = load_config(PrefGenConfig, "prefgen/tiny", overrides(tmp_path / "run", prompts, kind, pool, policy,
                                                                pool if judge else None, **extra))
    out = io.StringIO()
    report = Worker(cfg, 0, 1, out=out).run()
    return cfg, report, RunFiles(cfg.run_dir), out.getvalue()


def _check_accounting(files: RunFiles, report: dict) -> list[dict]:
    """Every prompt id is once in the pairs or once among the drops; the pairs are loadable preference rows."""
    prompts = [p["id"] for p in read_jsonl(files.prompts)]
    pairs = read_jsonl(files.preferences)
    ids = [r["id"] for r in pairs] + list(report["dropped"])
    assert sorted(ids) == sorted(prompts) and len(set(ids)) == len(ids)
    for r in pairs:
        assert r["chosen_rating"] > r["rejected_rating"] and r["chosen"][:-1] == r["rejected"][:-1]
    if pairs:
        assert len(read_rows(files.preferences, "preference")) == len(pairs)
    assert report["counts"]["pairs"] == len(pairs) and report["counts"]["prompts"] == len(prompts)
    return pairs


@pytest.mark.slow  # three vLLM engine starts (~25 s on 2 cores)
@pytest.mark.vllm
def test_prefgen_llm_judge_structured_output_vllm(tmp_path, prefgen_models, monkeypatch):
    require_vllm()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: ~2 s per engine start instead of ~15
    # a sampling judge (temperature 1): the random model's greedy reply would be one constant score
    cfg, report, files, log = _run(tmp_path, prefgen_models, n_prompts=8, **{
        "engine.kind": "vllm", "engine.max_model_len": 1024, "judge.temperature": 1.0})
    judged = [j for m in ("pool-a", "policy-b") for j in read_jsonl(files.judgments(m, 0))]
    completions = [c for m in ("pool-a", "policy-b") for c in read_jsonl(files.completions(m, 0))]
    assert len(completions) == 8 * 3  # pool n=1 + policy n=2 per prompt
    usable = [c for c in completions if c["text"]]
    assert len(judged) == len(usable) > 0
    # constrained to the score format: every reply is exactly the JSON, and every one parsed
    assert all(j["judge"] == "llm" and re.fullmatch(SCORE_REGEX, j["reply"]) for j in judged)
    assert all(j["ratings"] is not None for j in judged)
    m = report["models"]
    assert m["pool-a"]["counts"]["judged"] + m["policy-b"]["counts"]["judged"] == len(judged)
    assert sum(m["policy-b"]["rating_histogram"].values()) == m["policy-b"]["counts"]["judged"]
    assert report["judge"]["structured_output"] and report["sampling"]["policy-b"]["n"] == 2
    pairs = _check_accounting(files, report)
    assert pairs, "a random judge under the score grammar rates unevenly: some prompt gives a pair"
    assert {r["chosen_model"] for r in pairs} <= {"pool-a", "policy-b"}
    assert "pairs from 8 prompts" in log


def test_prefgen_unparseable_replies_are_dropped_and_counted(tmp_path, prefgen_models):
    """The torch engine has no structured output: the random judge's free text has no scores, so every completion
    is dropped as ``judge_unparsed`` (none is scored 0) and no pair is written."""
    cfg, report, files, log = _run(tmp_path, prefgen_models)
    m = report["models"]
    assert m["pool-a"]["counts"]["judge_unparsed"] == m["pool-a"]["counts"]["completions"] - m["pool-a"]["counts"].get("empty", 0)
    assert m["pool-a"]["counts"]["judged"] == m["policy-b"]["counts"]["judged"] == 0
    assert all(j["ratings"] is None for j in read_jsonl(files.judgments("policy-b", 0)))
    assert report["counts"]["dropped_fewer_than_2_rated"] == 6 and report["counts"]["pairs"] == 0
    _check_accounting(files, report)
    assert "judge_unparsed" in log


def test_prefgen_verifier_judge_and_resume_skips_finished_work(tmp_path, prefgen_models):
    """Verifiable prompts are rated by their verifier (no judge engine): random text is wrong, every rating is 1, all
    tie, so every prompt is dropped as all_tied. A second run with the same config reuses every shard file."""
    cfg, report, files, _ = _run(tmp_path, prefgen_models, kind="rlvr", judge=False, shard_size=4)
    judged = read_jsonl(files.judgments("policy-b", 1))
    assert judged and all(j["judge"] == "verifier" and j["ratings"]["helpfulness"] == 1.0 for j in judged)
    assert report["counts"]["pairs"] == 0 and set(report["dropped"].values()) <= {"all_tied", "fewer_than_2_rated"}
    _check_accounting(files, report)
    stamps = {p: p.stat().st_mtime_ns for p in files.root.rglob("shard_*")}
    Worker(cfg, 0, 1, out=io.StringIO()).run()
    assert {p: p.stat().st_mtime_ns for p in files.root.rglob("shard_*")} == stamps


def test_prefgen_bad_input_fails_before_any_engine(tmp_path, prefgen_models):
    tok, pool, policy = prefgen_models
    prompts = write_jsonl(tmp_path / "p.jsonl", sft_rows(3))
    load = lambda *more: load_config(PrefGenConfig, "prefgen/tiny",  # noqa: E731
                                     overrides(tmp_path / "run", prompts, "sft", pool, policy, pool) + list(more))
    # a pool model whose tokenizer is another model's (more tokens than its vocabulary)
    small = make_model(tmp_path / "small_vocab", tok, 2, vocab_size=200)
    cfg = load(f"pool=[{{name: small, path: {small}, n: 1}}]")
    with pytest.raises(ValueError, match="model 'small'.*tokenizer.*vocab_size is 200"):
        Worker(cfg, 0, 1, out=io.StringIO()).run()
    # a model directory without a tokenizer
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((pool / "config.json").read_text())
    cfg = load(f"pool=[{{name: bare, path: {bare}, n: 1}}]")
    with pytest.raises(FileNotFoundError, match="model 'bare'.*set its tokenizer"):
        Worker(cfg, 0, 1, out=io.StringIO()).run()
    assert not (tmp_path / "run" / "completions").exists()
    # a malformed prompt row: file and line
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(sft_rows(1)[0]) + "\n" + json.dumps({"messages": "hi"}) + "\n")
    cfg = load_config(PrefGenConfig, "prefgen/tiny", overrides(tmp_path / "run2", bad, "sft", pool, policy, pool))
    with pytest.raises(DataFileError, match=r"bad.jsonl:2"):
        Worker(cfg, 0, 1, out=io.StringIO()).run()
    # config errors name the field
    with pytest.raises(ValueError, match="prompts.kind"):
        load("prompts.kind=chat")
    with pytest.raises(ValueError, match="verifier cannot judge"):
        load_config(PrefGenConfig, "prefgen/tiny", overrides(tmp_path / "r", prompts, "sft", pool, policy, None))


def test_prefgen_resume_with_other_settings_is_refused(tmp_path, prefgen_models):
    cfg, _, files, _ = _run(tmp_path, prefgen_models, kind="rlvr", judge=False, n_prompts=2)
    tok, pool, policy = prefgen_models
    changed = load_config(PrefGenConfig, "prefgen/tiny", overrides(
        tmp_path / "run", tmp_path / "prompts.jsonl", "rlvr", pool, policy, None, seed=5))
    with pytest.raises(ValueError, match=r"other settings \(seed differ"):
        Worker(changed, 0, 1, out=io.StringIO()).run()


def test_prefgen_engine_call_over_its_timeout_stops_naming_the_model(tmp_path, prefgen_models):
    """An engine call past ``engine.timeout_s`` stops the worker with an error naming the model (the finished shards
    stay for the rerun); nothing hangs."""
    from megatron_tulu.prefgen.run import EngineCallTimeout

    # the first engine call is the pool model's engine start (then its shards' generations, under the same bound)
    with pytest.raises(EngineCallTimeout, match=r"starting the engine for pool-a: no answer within"):
        _run(tmp_path, prefgen_models, kind="rlvr", judge=False, **{"engine.timeout_s": 1e-4})
    assert not (tmp_path / "run" / "completions" / "pool-a" / "shard_00000.jsonl").exists()


@pytest.mark.slow  # a local Ray with two engine actors per model (~40 s on 2 cores)
def test_prefgen_ray_engines_write_what_an_engine_in_the_worker_writes(tmp_path, prefgen_models):
    """``engine.placement=ray`` (how a worker reaches the container's vLLM, ``$MT_VLLM_PYTHON``): two engines as
    actors of a Ray the worker starts, each given part of every shard's prompts, write the same completions as one
    engine in the worker's own process (each prompt's sampling is seeded by its index in the shard)."""
    def completions(files: RunFiles) -> list:
        return [(p.relative_to(files.root).as_posix(), read_jsonl(p))
                for p in sorted(files.root.glob("completions/*/shard_*"))]

    extra = dict(n_prompts=8, shard_size=4, kind="rlvr", judge=False)
    (tmp_path / "here").mkdir()
    (tmp_path / "ray").mkdir()
    _, _, here, _ = _run(tmp_path / "here", prefgen_models, **extra)
    def exit_75(signum, frame):  # stands in for the worker's handler (preemption.exit_on_preemption)
        raise AssertionError("not called")

    previous = signal.signal(signal.SIGTERM, exit_75)
    try:
        _, report, ray, out = _run(tmp_path / "ray", prefgen_models, **extra,
                                   **{"engine.placement": "ray", "engine.num_engines": 2})
        handler = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handler is exit_75  # ray.init's own SIGTERM handler (sys.exit: no requeue) was undone
    assert len(completions(ray)) == 4 and completions(ray) == completions(here)  # 2 shards x 2 models
    _check_accounting(ray, report)


def test_prefgen_engine_call_timeout_is_the_error_even_when_the_shutdown_fails_after_it(tmp_path, prefgen_models,
                                                                                       monkeypatch, caplog):
    """A generation past ``engine.timeout_s`` leaves the engine busy (a Ray actor takes one call at a time), so the
    shutdown after it may wait and fail too: the worker still stops within a bound, with the timeout naming the shard,
    and logs the shutdown's failure (it used to wait another ``engine.timeout_s`` and raise the shutdown's error)."""
    import threading
    import time

    from megatron_tulu.prefgen import run as prefgen_run

    class Busy:
        supports_regex = False
        released = threading.Event()

        def generate(self, prompts, sampling):
            self.released.wait(30)

        def shutdown(self):
            self.released.wait(30)
            raise RuntimeError("engine shutdown: no answer")

    monkeypatch.setattr(prefgen_run, "start_engine", lambda *a, **k: Busy())
    t0 = time.monotonic()
    try:
        with pytest.raises(prefgen_run.EngineCallTimeout, match=r"completions of pool-a, shard 0: no answer within 1s"):
            _run(tmp_path, prefgen_models, kind="rlvr", judge=False, **{"engine.timeout_s": 1})
        assert time.monotonic() - t0 < 10  # the call's bound, then the shutdown's (at most the same), not 30 s
        assert "the engine's shutdown failed too: EngineCallTimeout: shutting the engine down" in caplog.text
    finally:
        Busy.released.set()
