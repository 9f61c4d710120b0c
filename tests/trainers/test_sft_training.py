"""SFT trainer on the synthetic set (CPU, gloo, tiny preset): loss falls; TP=2 x PP=2 (also with sequence
parallelism) matches TP=1; the summed
(and mean) loss does not depend on how the global batch is split over micro-batches and DP ranks; a checkpoint
saved at TP=2 x PP=2 loads at TP=1 (x DP=4) and continues the same; bad layouts fail before any work.

The runs themselves happen in two launches (see conftest.py); these tests compare their metrics.jsonl.
"""

from __future__ import annotations

import json

import pytest

from trainer_helpers import REF_STEPS, SPLITS_1RANK, SPLITS_DP2, step_records

pytestmark = pytest.mark.slow


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _assert_resumes_and_exports_like_tp2pp2(runs: dict, name: str, resumed_name: str) -> None:
    """``resumed_name`` (resumed from ``name``'s step-3 checkpoint at another layout) repeats ``name``'s steps 4-6,
    and ``name``'s HF export equals the TP=2 x PP=2 run's tensor for tensor."""
    run, resumed = step_records(runs[name]), step_records(runs[resumed_name])
    assert sorted(resumed) == [4, 5, 6]
    for s in resumed:
        assert _rel(resumed[s]["loss"], run[s]["loss"]) < 1e-4, (s, resumed[s]["loss"], run[s]["loss"])
        assert _rel(resumed[s]["grad_norm"], run[s]["grad_norm"]) < 1e-3
    a, b = _hf_tensors(runs[name]), _hf_tensors(runs["tp2pp2"])
    assert a and sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape and (a[k] - b[k]).abs().max() < 1e-4, k


def _hf_tensors(run) -> dict:
    """Every tensor of a run's HF export (``run/hf/*.safetensors``)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run / "hf").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_loss_decreases(one_rank_runs):
    recs = step_records(one_rank_runs["ref"])
    assert sorted(recs) == list(range(1, REF_STEPS + 1))
    loss = [r["loss"] for r in recs.values()]
    first, last = sum(loss[:2]) / 2, sum(loss[-2:]) / 2
    assert last < 0.92 * first, f"summed SFT loss did not fall enough over {REF_STEPS} steps: {loss}"
    # label tokens are counted per step: a step with none would make the loss meaningless
    assert all(r["label_tokens"] > 0 for r in recs.values())
    # warm-up (3% of 6 steps -> 1 step at the peak) then linear decay
    lrs = [r["lr"] for r in recs.values()]
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[1:], lrs[2:]))


def test_tp2_pp2_matches_tp1(one_rank_runs, four_rank_runs):
    ref, par = step_records(one_rank_runs["ref"]), step_records(four_rank_runs["tp2pp2"])
    assert sorted(par) == sorted(ref)
    for s in ref:
        assert _rel(ref[s]["loss"], par[s]["loss"]) < 1e-4, (s, ref[s]["loss"], par[s]["loss"])
        assert ref[s]["label_tokens"] == par[s]["label_tokens"]
        # the grad norm (and with it the clipping) must not count TP/PP shards twice
        assert _rel(ref[s]["grad_norm"], par[s]["grad_norm"]) < 1e-3, (s, ref[s]["grad_norm"], par[s]["grad_norm"])


@pytest.mark.parametrize("name", ["tp2pp2_sp", "tp2pp2_sp_fused"])
def test_sequence_parallel_matches_tp1(one_rank_runs, four_rank_runs, name):
    """TP=2 x PP=2 with sequence parallelism (activations sharded over the sequence between the TP regions, the
    norms' gradients all-reduced over TP), with the LM head and with the fused log-prob head: the steps of
    TP=1 (step 2 shows the step-1 update was the same)."""
    ref, sp = step_records(one_rank_runs["ref"]), step_records(four_rank_runs[name])
    assert sorted(sp) == [1, 2]
    for s in (1, 2):
        assert _rel(ref[s]["loss"], sp[s]["loss"]) < 1e-4, (s, ref[s]["loss"], sp[s]["loss"])
        assert _rel(ref[s]["grad_norm"], sp[s]["grad_norm"]) < 1e-3, (s, ref[s]["grad_norm"], sp[s]["grad_norm"])


@pytest.mark.parametrize("mode", ["full", "selective", "full_block"])
def test_activation_recompute_gives_the_same_steps(one_rank_runs, mode):
    ref, rec = step_records(one_rank_runs["ref"]), step_records(one_rank_runs[f"recompute_{mode}"])
    assert sorted(rec) == [1, 2]
    for s in (1, 2):  # step 2 shows the step-1 update was the same
        for key in ("loss", "grad_norm"):
            assert _rel(ref[s][key], rec[s][key]) < 1e-5, (mode, s, key, ref[s][key], rec[s][key])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_split_invariance(one_rank_runs, four_rank_runs, reduction):
    """Global batch 8 as 1x8, 4x2 (one rank) and 2 micro-batches of 2 on each of DP=2 ranks (x PP=2): same
    step-1 loss and gradient norm, hence the same update and the same step-2 loss."""
    runs = {n: one_rank_runs[n] for n in SPLITS_1RANK if n.startswith(reduction)}
    runs.update({n: four_rank_runs[n] for n in SPLITS_DP2 if n.startswith(reduction)})
    if reduction == "sum":
        runs["sum_4 (ref, 2x4)"] = one_rank_runs["ref"]
    recs = {n: step_records(d) for n, d in runs.items()}
    base_name = f"{reduction}_8"
    base = recs[base_name]
    for name, r in recs.items():
        for key, tol in (("loss", 2e-5), ("grad_norm", 1e-4)):
            assert _rel(r[1][key], base[1][key]) < tol, f"step 1 {key}: {name}={r[1][key]} vs {base_name}={base[1][key]}"
        assert _rel(r[2]["loss"], base[2]["loss"]) < 1e-4, f"step 2 loss: {name}={r[2]['loss']} vs {base[2]['loss']}"
    if reduction == "sum":  # Tülu 3: summed token loss / sequences in the global batch
        assert base[1]["loss"] == pytest.approx(base[1]["loss_per_token"] * base[1]["label_tokens"] / 8, rel=1e-6)
    else:
        assert base[1]["loss"] == pytest.approx(base[1]["loss_per_token"], rel=1e-6)


def test_reshard_tp2pp2_checkpoint_to_tp1(four_rank_runs):
    """Saved at TP=2 x PP=2 (step 3), loaded at TP=1 x DP=4 (model AND distributed-optimizer state): steps
    4-6 equal the TP=2 x PP=2 run's own continuation."""
    ckpt = four_rank_runs["tp2pp2"] / "checkpoints" / "step_00000003"
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 4
    par, resumed = step_records(four_rank_runs["tp2pp2"]), step_records(four_rank_runs["reshard"])
    assert sorted(resumed) == [4, 5, 6], "the resharded run must start after step 3"
    for s in resumed:
        assert _rel(resumed[s]["loss"], par[s]["loss"]) < 1e-4, (s, resumed[s]["loss"], par[s]["loss"])
        assert _rel(resumed[s]["grad_norm"], par[s]["grad_norm"]) < 1e-3
        assert resumed[s]["lr"] == pytest.approx(par[s]["lr"])


def test_batch_not_divisible_fails_before_any_work(four_rank_runs):
    err = four_rank_runs["bad_batch_error"]
    assert err is not None and err.startswith("ValueError")
    assert "train.global_batch_size=6" in err and "micro_batch_size x dp = 2 x 4 = 8" in err, err
    # nothing was written: no run dir, no checkpoints, no metrics (the data was not even tokenized)
    assert not four_rank_runs["bad_batch_dir"].exists()


def test_fp8_refused_on_cpu(four_rank_runs):
    err = four_rank_runs["fp8_error"]
    assert err is not None and "model.fp8='hybrid'" in err and "GPU" in err, err


def test_interleaved_pipeline_matches_tp1(one_rank_runs, four_rank_runs):
    """TP=2 x PP=2 x VPP=2 (megatron's interleaved 1F1B over two model chunks per rank) and PP=2 x VPP=3 with the
    embedding and loss counted as layers (chunks holding no decoder layer at all): the steps of TP=1."""
    ref = step_records(one_rank_runs["ref"])
    for name, steps in (("tp2pp2vpp2", REF_STEPS), ("pp2vpp3_emb", 2)):
        par = step_records(four_rank_runs[name])
        assert sorted(par) == list(range(1, steps + 1)), name
        for s in par:
            assert _rel(ref[s]["loss"], par[s]["loss"]) < 1e-4, (name, s, ref[s]["loss"], par[s]["loss"])
            assert _rel(ref[s]["grad_norm"], par[s]["grad_norm"]) < 1e-3, (name, s, ref[s]["grad_norm"], par[s]["grad_norm"])


def test_interleaved_checkpoint_and_export_reshard(four_rank_runs):
    """The interleaved run's step-3 checkpoint (two chunks per rank) resumes at TP=1 x DP=4 with its own steps 4-6;
    its HF export equals the plain TP=2 x PP=2 run's, tensor for tensor (same names, same layer order)."""
    _assert_resumes_and_exports_like_tp2pp2(four_rank_runs, "tp2pp2vpp2", "vpp_reshard")


def test_interleaved_needs_pp_microbatches(four_rank_runs):
    err = four_rank_runs["vpp_few_mb_error"]
    assert err is not None and err.startswith("ValueError"), err
    assert "parallel.vpp=2" in err and "at least pp=2 micro-batches" in err and "train.global_batch_size=8" in err, err


def test_context_parallel_matches_tp1(one_rank_runs, four_rank_runs):
    """Context parallelism (each sequence split over the CP ranks in two load-balanced chunks, keys/values
    all-gathered): CP=2 x TP=2 on packed rows (the block-causal mask split by query rows) for 6 steps; CP=2 x TP=2
    with sequence parallelism and selective recompute; CP=4 on unpacked rows. Each follows the TP=1 run of the same
    data step by step."""
    ref = step_records(one_rank_runs["ref"])
    cases = (("cp2tp2", ref, REF_STEPS), ("cp2tp2_sp", ref, 2),
             ("cp4_unpacked", step_records(one_rank_runs["unpacked"]), 2))
    for name, base, steps in cases:
        par = step_records(four_rank_runs[name])
        assert sorted(par) == list(range(1, steps + 1)), name
        for s in par:
            assert base[s]["label_tokens"] == par[s]["label_tokens"], (name, s)  # counted once, not once per CP rank
            assert _rel(base[s]["loss"], par[s]["loss"]) < 1e-4, (name, s, base[s]["loss"], par[s]["loss"])
            assert _rel(base[s]["grad_norm"], par[s]["grad_norm"]) < 1e-3, (name, s, base[s]["grad_norm"], par[s]["grad_norm"])


def test_context_parallel_checkpoint_and_export_reshard(four_rank_runs):
    """The CP=2 x TP=2 step-3 checkpoint (optimizer shards over DP x CP) resumes at PP=2 x CP=2 with the same steps
    4-6, and its HF export equals the TP=2 x PP=2 run's tensor for tensor (CP ranks hold replicas, written once)."""
    _assert_resumes_and_exports_like_tp2pp2(four_rank_runs, "cp2tp2", "cp_reshard")


def test_converter_rank_files_refused_for_interleaved_layout(four_rank_runs):
    """The converter writes per-rank files for an even PP split; a PP=2 x VPP=2 run holds other layers per rank, so
    loading them is refused with the way out (HF directory or training checkpoint) instead of loading wrong layers."""
    err = four_rank_runs["vpp_rank_files_error"]
    assert err is not None and "per-rank files of an even split over pp=2" in err, err
    assert "model.init_hf" in err and "training checkpoint" in err, err
