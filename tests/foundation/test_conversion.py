"""HF <-> megatron conversion: logits match transformers at TP=1, TP=2, PP=2, TP=2xPP=2 (loading straight from HF
and from offline-converted rank files), live-model export is bit-exact, offline round trip is bit-exact.

All multi-rank checks run in ONE 4-process launch (layouts with fewer ranks fill the rest with data parallel).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from foundation_helpers import make_hf_llama, read_hf_tensors

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
CONFIGS = {
    # GQA ratio 4, odd vocab (padding at every TP), untied, llama3 rope scaling, 2 layers per PP stage
    "gqa4_vocab301_untied_rope": dict(vocab=301, heads=8, kv_heads=2, layers=4, tie=False, rope_scaling=True),
    # GQA ratio 1 (plain MHA), tied embeddings, no rope scaling
    "mha_vocab256_tied": dict(vocab=256, heads=4, kv_heads=4, layers=2, tie=True, rope_scaling=False,
                              rope_theta=10000.0, seed=1),
    # GQA ratio 4, odd vocab, tied, rope scaling
    "gqa4_vocab301_tied_rope": dict(vocab=301, heads=8, kv_heads=2, layers=2, tie=True, rope_scaling=True, seed=2),
}
TOL = 1e-4


def _convert(hf: Path, out: Path, tp: int, pp: int) -> Path:
    from megatron_tulu.checkpoint.convert import main

    assert main(["hf-to-mcore", "--hf", str(hf), "--out", str(out), "--tp", str(tp), "--pp", str(pp)]) == 0
    return out


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for name, kw in CONFIGS.items():
        d = make_hf_llama(root / name, **kw)
        (d / "tokenizer.json").write_text('{"fake": "tokenizer file, copied through"}')
        dirs[name] = d
    return dirs


@pytest.fixture(scope="module")
def dist_results(hf_dirs, tmp_path_factory):
    """One 4-process launch that computes every multi-rank result the tests below assert on."""
    from megatron_tulu.checkpoint.verify import fixed_batch, hf_logits
    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("mcore")
    jobs, meta = [], []
    for name, d in hf_dirs.items():
        ids = fixed_batch(CONFIGS[name]["vocab"], batch=2, seq=12, seed=len(meta))
        for tp, pp in LAYOUTS:
            jobs.append((str(d), tp, pp, None, ids))
            meta.append((name, tp, pp, "hf"))
        # offline rank files: every layout for the first config, TP=2xPP=2 for the others
        for tp, pp in LAYOUTS if name == "gqa4_vocab301_untied_rope" else [(2, 2)]:
            ckpt = _convert(d, root / f"{name}_tp{tp}_pp{pp}", tp, pp)
            jobs.append((str(d), tp, pp, str(ckpt), ids))
            meta.append((name, tp, pp, "rank_files"))
    # TP=2xPP=2 for an untied and a tied model, and PP=2 with DP=2 (senders must be the DP-rank-0 stages)
    export_jobs = [(str(hf_dirs[n]), str(root / f"export_{n}_tp{tp}_pp{pp}"), tp, pp)
                   for n, tp, pp in (("gqa4_vocab301_untied_rope", 2, 2), ("mha_vocab256_tied", 2, 2),
                                     ("gqa4_vocab301_untied_rope", 1, 2))]
    mismatch = _convert(hf_dirs["gqa4_vocab301_untied_rope"], root / "tp1_pp1_for_mismatch", 1, 1)
    out = run_distributed(
        __import__("foundation_helpers").rank_conversion_checks, world_size=4,
        args=(jobs, export_jobs, str(mismatch)), timeout_s=400,
    )[0]
    refs = {}
    diffs = []
    for (name, tp, pp, src), job, logits in zip(meta, jobs, out["logits"]):
        if name not in refs:
            refs[name] = hf_logits(str(hf_dirs[name]), job[4])
        assert logits is not None and logits.shape == refs[name].shape, (name, tp, pp, src)
        diffs.append(((name, tp, pp, src), float((logits - refs[name]).abs().max())))
    return {"diffs": diffs, "iter": out["iter"], "metas": out["metas"], "export_jobs": export_jobs,
            "mismatch_error": out["mismatch_error"]}


@pytest.mark.slow
def test_logits_match_transformers_loading_from_hf(dist_results):
    rows = [(k, d) for k, d in dist_results["diffs"] if k[3] == "hf"]
    assert {(k[1], k[2]) for k, _ in rows} == set(LAYOUTS)
    assert {k[0] for k, _ in rows} == set(CONFIGS)
    bad = [(k, d) for k, d in rows if not d <= TOL]
    print("max_abs_diff per (config, tp, pp):", rows)
    assert not bad, f"logits differ from transformers by more than {TOL}: {bad}"


@pytest.mark.slow
def test_logits_match_transformers_from_offline_rank_files(dist_results):
    rows = [(k, d) for k, d in dist_results["diffs"] if k[3] == "rank_files"]
    assert len(rows) == len(LAYOUTS) + len(CONFIGS) - 1
    bad = [(k, d) for k, d in rows if not d <= TOL]
    print("max_abs_diff per (config, tp, pp) from rank files:", rows)
    assert not bad, f"logits differ from transformers by more than {TOL}: {bad}"


@pytest.mark.slow
def test_iter_hf_tensors_from_live_tp_pp_models_is_bit_exact(dist_results, hf_dirs):
    for (_, _, tp, pp), got, metas in zip(dist_results["export_jobs"], dist_results["iter"], dist_results["metas"]):
        # the weight sync's up-front metadata (preset only) is exactly the stream, in order, at this layout
        assert metas == [(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in got.items()], (tp, pp)
    for (hf_dir, *_), got in zip(dist_results["export_jobs"], dist_results["iter"]):
        want = read_hf_tensors(hf_dir)
        if json.loads((Path(hf_dir) / "config.json").read_text())["tie_word_embeddings"]:
            want.pop("lm_head.weight", None)  # tied: the output layer IS the embedding
        assert set(got) == set(want), (hf_dir, set(got) ^ set(want))
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), f"{hf_dir}: {k} differs"


@pytest.mark.slow
def test_export_hf_from_live_model_is_bit_exact_and_loads_in_transformers(dist_results):
    from megatron_tulu.checkpoint.hf_io import preset_from_hf_config

    for hf_dir, export_dir, *_ in dist_results["export_jobs"]:
        want, got = read_hf_tensors(hf_dir), read_hf_tensors(export_dir)
        tied = json.loads((Path(hf_dir) / "config.json").read_text())["tie_word_embeddings"]
        if tied:
            want.pop("lm_head.weight", None)
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), f"{export_dir}: {k} differs"
        cfg_in = json.loads((Path(hf_dir) / "config.json").read_text())
        cfg_out = json.loads((Path(export_dir) / "config.json").read_text())
        assert preset_from_hf_config(cfg_out) == preset_from_hf_config(cfg_in)
        assert not list(Path(export_dir).parent.glob(f".{Path(export_dir).name}.tmp-*"))


@pytest.mark.slow
def test_load_rank_file_with_other_layout_names_both_layouts(dist_results):
    msg = dist_results["mismatch_error"]
    assert msg is not None, "loading tp=1 pp=1 rank files into a tp=2 pp=2 model did not raise ValueError"
    assert "tp=1 pp=1" in msg and "tp=2 pp=2" in msg, msg


@pytest.mark.parametrize("name", ["gqa4_vocab301_untied_rope", "gqa4_vocab301_tied_rope", "mha_vocab256_tied"])
@pytest.mark.parametrize("tp,pp", [(2, 2), (1, 1), (2, 1), (1, 2)])
def test_offline_round_trip_hf_mcore_hf_is_bit_exact(hf_dirs, tmp_path, name, tp, pp):
    from megatron_tulu.checkpoint.convert import main
    from megatron_tulu.checkpoint.hf_io import preset_from_hf_config

    src = hf_dirs[name]
    ckpt = _convert(src, tmp_path / "mcore", tp, pp)
    back = tmp_path / "hf_back"
    assert main(["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(back)]) == 0
    want, got = read_hf_tensors(src), read_hf_tensors(back)
    if CONFIGS[name]["tie"]:
        want.pop("lm_head.weight", None)  # tied: the output layer IS the embedding
    assert set(got) == set(want), set(got) ^ set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), f"{k} differs after round trip"
    cfg_in = json.loads((src / "config.json").read_text())
    cfg_out = json.loads((back / "config.json").read_text())
    assert cfg_out == cfg_in
    assert preset_from_hf_config(cfg_out) == preset_from_hf_config(cfg_in)
    assert (back / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    assert (back / "generation_config.json").exists(), "generation_config.json lost in the round trip"


def test_sharded_hf_input_converts_and_round_trips(hf_dirs, tmp_path):
    """A multi-file HF checkpoint (model.safetensors.index.json) reads like a single-file one."""
    from megatron_tulu.checkpoint.convert import main
    from megatron_tulu.checkpoint.hf_io import write_hf_dir

    src = hf_dirs["gqa4_vocab301_untied_rope"]
    want = read_hf_tensors(src)
    sharded = write_hf_dir(tmp_path / "sharded", json.loads((src / "config.json").read_text()), iter(want.items()),
                           shard_bytes=40_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3 and set(index["weight_map"]) == set(want)
    ckpt = _convert(sharded, tmp_path / "mcore", 2, 2)
    assert main(["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "back")]) == 0
    got = read_hf_tensors(tmp_path / "back")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
