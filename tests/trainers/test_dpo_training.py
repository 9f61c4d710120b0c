"""DPO trainer mechanics on the tiny model (CPU, gloo): cached vs on-the-fly reference, separate vs concatenated
forward, every reference loss at policy == reference, the reference cache written once and reused, exact resume
after SIGUSR1 (including which cached reference rows each step reads), and DP=2 against DP=1.

All runs start from the same random tiny HF Llama (what is checked here does not need a trained model) and
happen in two launches: one single-rank, one 2-rank. The tests compare what those runs logged and returned.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo_helpers import LN2, dpo_jobs, eval_records, dpo_overrides, make_tiny_hf, ref_cache_files, step_records
from megatron_tulu.preemption import REQUEUE_EXIT_CODE

STEPS = 3          # mechanics comparisons
RESUME_STEPS = 6   # uninterrupted vs SIGUSR1 at step 3 + resume
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected"]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory):
    from megatron_tulu.data.synthetic import generate
    from megatron_tulu.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("dpo")
    generate(root / "data", seed=0, scale="ci")
    hf = make_tiny_hf(root / "hf_init", len(load_tokenizer(root / "data" / "tokenizer")))
    return root, root / "data", hf


@pytest.fixture(scope="module")
def one_rank(setup_dirs):
    from megatron_tulu.testing import run_distributed

    root, data, hf = setup_dirs
    shared = root / "cache_shared"

    def ov(name, **extra):
        extra.setdefault("data.cache_dir", shared)
        return dpo_overrides(data, hf, root / name, **extra)

    jobs = {
        "cached": ("fit", ov("cached", **{"train.max_steps": STEPS})),
        "otf": ("fit", ov("otf", **{"train.max_steps": STEPS, "dpo.ref_mode": "on_the_fly"})),
        "concat": ("fit", ov("concat", **{"train.max_steps": STEPS, "dpo.forward_mode": "concatenated"})),
        "otf_concat": ("fit", ov("otf_concat", **{"train.max_steps": 1, "dpo.ref_mode": "on_the_fly",
                                                  "dpo.forward_mode": "concatenated"})),
        "dpo": ("fit", ov("dpo", **{"train.max_steps": 1, "dpo.loss_type": "dpo", "dpo.beta": 0.1,
                                    "dpo.label_smoothing": 0.1})),
        "ipo": ("fit", ov("ipo", **{"train.max_steps": 1, "dpo.loss_type": "ipo", "dpo.beta": 0.5})),
        "wpo": ("fit", ov("wpo", **{"train.max_steps": 1, "dpo.loss_type": "wpo", "dpo.beta": 0.1})),
        # reference-free: must not run a reference pass at all (own cache dir, checked empty of ref files)
        "simpo": ("fit", ov("simpo", **{"train.max_steps": 1, "dpo.loss_type": "simpo", "dpo.beta": 2.0,
                                        "data.cache_dir": root / "simpo" / "cache"})),
        # the Triton DPO kernel (interpreter mode on CPU) in place of the torch loss: same curves as above (the
        # fused linear+logprob head is the same token_logprobs call SFT makes; its curve test is the SFT one, since
        # the Triton interpreter makes it minutes per run)
        "fused": ("fit", ov("fused", **{"train.max_steps": STEPS, "dpo.use_fused_loss": "true"})),
        "fused_concat": ("fit", ov("fused_concat", **{"train.max_steps": STEPS, "dpo.forward_mode": "concatenated",
                                                      "dpo.use_fused_loss": "true"})),
        "fused_dpo": ("fit", ov("fused_dpo", **{"train.max_steps": 1, "dpo.loss_type": "dpo", "dpo.beta": 0.1,
                                                "dpo.label_smoothing": 0.1, "dpo.use_fused_loss": "true"})),
        "full": ("fit", ov("full", **{"train.max_steps": RESUME_STEPS})),
        # the interrupted run keeps its reference cache in its own run_dir (default cache location)
        "interrupted": (f"stop@{STEPS}", ov("resume", **{"train.max_steps": RESUME_STEPS, "data.cache_dir": root / "resume" / "data_cache"})),
        "resumed": ("fit", ov("resume", **{"train.max_steps": RESUME_STEPS, "data.cache_dir": root / "resume" / "data_cache"})),
    }
    names = list(jobs)
    out = run_distributed(dpo_jobs, 1, args=([jobs[n] for n in names],), timeout_s=900)[0]
    res = dict(zip(names, out))
    res["_dirs"] = {n: root / n for n in names if n not in ("interrupted", "resumed")}
    res["_dirs"]["resume"] = root / "resume"
    res["_root"] = root
    return res


@pytest.fixture(scope="module")
def two_rank(setup_dirs):
    from megatron_tulu.testing import run_distributed

    root, data, hf = setup_dirs
    run = root / "dp2"
    jobs = [("fit", dpo_overrides(data, hf, run, **{"train.max_steps": STEPS, "train.micro_batch_size": 2,
                                                      "data.cache_dir": run / "cache"})),
            # interleaved pipeline: PP=2 x VPP=2 (one layer per chunk), concatenated forward, cached reference
            ("fit", dpo_overrides(data, hf, root / "pp2vpp2", **{
                "train.max_steps": STEPS, "parallel.pp": 2, "parallel.vpp": 2, "dpo.forward_mode": "concatenated",
                "data.cache_dir": root / "pp2vpp2" / "cache"})),
            # context parallelism CP=2: each pair's rows split over the two ranks, per-token logps gathered back;
            # with the on-the-fly reference model (also CP-split), and with the cached reference pre-pass, the
            # concatenated forward and the Triton DPO loss on the gathered token logps
            ("fit", dpo_overrides(data, hf, root / "cp2_otf", **{
                "train.max_steps": STEPS, "parallel.cp": 2, "dpo.ref_mode": "on_the_fly",
                "data.cache_dir": root / "cp2_otf" / "cache"})),
            ("fit", dpo_overrides(data, hf, root / "cp2_fused_concat", **{
                "train.max_steps": STEPS, "parallel.cp": 2, "dpo.forward_mode": "concatenated",
                "dpo.use_fused_loss": "true", "data.cache_dir": root / "cp2_fused_concat" / "cache"}))]
    return run, run_distributed(dpo_jobs, 2, args=(jobs,), timeout_s=900)


@pytest.mark.slow
def test_step1_is_ln2_and_cached_equals_on_the_fly(one_rank):
    d = one_rank["_dirs"]
    cached, otf, otf_c = step_records(d["cached"]), step_records(d["otf"]), step_records(d["otf_concat"])
    assert sorted(cached) == sorted(otf) == list(range(1, STEPS + 1))
    # policy == reference at step 1: every implicit reward is 0, so the sigmoid loss is exactly ln 2
    for name, recs in (("cached", cached), ("on_the_fly", otf), ("on_the_fly+concatenated", otf_c)):
        assert recs[1]["loss"] == pytest.approx(LN2, abs=1e-6), (name, recs[1]["loss"])
        assert abs(recs[1]["rewards/margin"]) < 1e-6 and recs[1]["rewards/accuracy"] == 0.0, (name, recs[1])
    # the same gradient (norm) and metrics at step 1, and hence the same curve after it
    for s in cached:
        for key in ["loss", "grad_norm"] + METRICS:
            assert abs(cached[s][key] - otf[s][key]) <= 1e-5 * max(1.0, abs(cached[s][key])), (s, key, cached[s][key], otf[s][key])
    assert _rel(cached[1]["grad_norm"], otf_c[1]["grad_norm"]) < 1e-5
    # ... and the policy did move away from the reference (otherwise the later steps would compare nothing)
    assert abs(cached[2]["rewards/margin"]) > 1e-4 and abs(cached[2]["loss"] - LN2) > 1e-5, cached[2]
    # held-out pairs before any step: policy == reference there too
    for name in ("cached", "otf"):
        ev = eval_records(d[name])
        assert ev[0]["eval/loss"] == pytest.approx(LN2, abs=1e-6) and abs(ev[0]["eval/margin"]) < 1e-6, (name, ev[0])
        assert 0.0 <= ev[STEPS]["eval/accuracy"] <= 1.0
    # on the fly never reads a cache: the job got no cached reference tensor
    assert one_rank["otf"]["ref_train"] is None and one_rank["cached"]["ref_train"] is not None


@pytest.mark.slow
def test_separate_equals_concatenated(one_rank):
    sep, cat = step_records(one_rank["_dirs"]["cached"]), step_records(one_rank["_dirs"]["concat"])
    assert sorted(sep) == sorted(cat) == list(range(1, STEPS + 1))
    for s in sep:
        for key in ["loss", "grad_norm"] + METRICS:
            assert abs(sep[s][key] - cat[s][key]) <= 1e-5 * max(1.0, abs(sep[s][key])), (s, key, sep[s][key], cat[s][key])


@pytest.mark.slow
def test_fused_dpo_kernel_gives_the_reference_curve(one_rank):
    d = one_rank["_dirs"]
    for ref_name, fused_name in (("cached", "fused"), ("concat", "fused_concat"), ("dpo", "fused_dpo")):
        ref, fused = step_records(d[ref_name]), step_records(d[fused_name])
        assert sorted(ref) == sorted(fused) and ref, (ref_name, sorted(ref), sorted(fused))
        for s in ref:
            # step 1: policy == reference, every margin is a tie at 0 up to summation order, so "chosen > rejected"
            # (accuracy) is decided by rounding there; every other metric must agree
            keys = [k for k in ["loss", "grad_norm"] + METRICS if not (s == 1 and k == "rewards/accuracy")]
            for key in keys:
                assert abs(ref[s][key] - fused[s][key]) <= 1e-5 * max(1.0, abs(ref[s][key])), \
                    (fused_name, s, key, ref[s][key], fused[s][key])
    # the curve moved (step 3 differs from step 1), so equal curves compare real updates
    assert abs(step_records(d["fused"])[STEPS]["loss"] - LN2) > 1e-5


def test_fused_dpo_loss_refuses_wpo():
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.dpo import DPOConfig

    with pytest.raises(ValueError, match="dpo.use_fused_loss=true supports"):
        load_config(DPOConfig, "dpo/tiny", ["dpo.loss_type=wpo", "dpo.use_fused_loss=true"])


@pytest.mark.slow
def test_every_reference_loss_at_policy_equals_reference(one_rank):
    d = one_rank["_dirs"]
    # sigmoid DPO (with label smoothing: -(1-e) log s(0) - e log s(0) is still ln 2)
    dpo = step_records(d["dpo"])[1]
    assert dpo["loss"] == pytest.approx(LN2, abs=1e-6)
    # IPO: (0 - 1/(2 beta))^2 with beta 0.5 -> 1
    ipo = step_records(d["ipo"])[1]
    assert ipo["loss"] == pytest.approx((1.0 / (2 * 0.5)) ** 2, abs=1e-6)
    # WPO: ln 2 weighted by min(1, exp(mean logp_c + mean logp_r)) in (0, 1]
    wpo = step_records(d["wpo"])[1]
    assert 0.0 < wpo["loss"] <= LN2 + 1e-9
    for rec in (dpo, ipo, wpo):
        assert abs(rec["rewards/margin"]) < 1e-6 and rec["rewards/accuracy"] == 0.0
        assert math.isfinite(rec["grad_norm"]) and rec["grad_norm"] > 0
    # SimPO is reference-free: it trains, without any reference pass
    simpo = step_records(d["simpo"])[1]
    assert math.isfinite(simpo["loss"]) and simpo["loss"] > 0
    assert one_rank["simpo"]["ref_train"] is None
    assert ref_cache_files(d["simpo"] / "cache") == []


@pytest.mark.slow
def test_reference_cache_written_once_and_reused(one_rank):
    root = one_rank["_root"]
    shared = ref_cache_files(root / "cache_shared")
    # one file per data set (train pairs, held-out pairs) x initial model, whatever the loss/mode/forward
    assert len(shared) == 2, shared
    assert one_rank["cached"]["ref_cache_hit"] is False, "the first cached run must run the pre-pass"
    for name in ("concat", "dpo", "ipo", "wpo", "full"):
        assert one_rank[name]["ref_cache_hit"] is True, f"{name} recomputed the reference instead of reading the cache"
        assert torch.equal(one_rank[name]["ref_train"], one_rank["cached"]["ref_train"])
    on_disk = [torch.load(f) for f in shared]
    assert any(t.shape == one_rank["cached"]["ref_train"].shape and torch.equal(t, one_rank["cached"]["ref_train"])
               for t in on_disk)
    mtimes = {f.name: f.stat().st_mtime_ns for f in shared}
    # restart in the same run_dir: the file written by the interrupted run is read, not rewritten
    assert one_rank["interrupted"]["ref_cache_hit"] is False
    assert one_rank["resumed"]["ref_cache_hit"] is True
    own = ref_cache_files(root / "resume" / "data_cache")
    # key = data + weights fingerprint, not the run: the same names in both places
    assert [f.name for f in own] == [f.name for f in shared]
    # ... and nothing rewrote the shared files after the first run wrote them (mtime before the later runs)
    first_done = (root / "cached" / "metrics.jsonl").stat().st_mtime_ns
    assert all(m <= first_done for m in mtimes.values()), (mtimes, first_done)


@pytest.mark.slow
def test_sigusr1_resume_reproduces_uninterrupted_run(one_rank):
    full, inter, res = one_rank["full"], one_rank["interrupted"], one_rank["resumed"]
    assert inter["exit"] == REQUEUE_EXIT_CODE, inter["exit"]
    assert sorted(inter["seen"]) == list(range(1, STEPS + 1)), "the interrupted run must stop right after step 3"
    assert (one_rank["_dirs"]["resume"] / "checkpoints" / f"step_{STEPS:08d}").exists()
    assert res["exit"] is None and res["start_step"] == STEPS
    assert sorted(res["seen"]) == list(range(STEPS + 1, RESUME_STEPS + 1))
    # the same pairs, and the same cached reference rows for them, at every step
    for s in range(1, RESUME_STEPS + 1):
        got = inter["seen"][s] if s <= STEPS else res["seen"][s]
        assert got["indices"] == full["seen"][s]["indices"], s
        assert torch.equal(got["ref"], full["seen"][s]["ref"]), s
        assert torch.equal(got["ref"], full["ref_train"][torch.tensor(got["indices"])]), s
    ref, resumed = step_records(one_rank["_dirs"]["full"]), step_records(one_rank["_dirs"]["resume"])
    assert sorted(resumed) == sorted(ref) == list(range(1, RESUME_STEPS + 1))
    for s in ref:
        for key in ["loss", "grad_norm", "lr"] + METRICS:
            assert resumed[s][key] == ref[s][key], (s, key, resumed[s][key], ref[s][key])


@pytest.mark.slow
def test_dp2_matches_dp1(one_rank, two_rank):
    run, out = two_rank
    assert len(out) == 2 and all(r[0]["exit"] is None for r in out)
    # the sharded pre-pass gathers the same reference logps on every rank as the 1-rank pass
    for r in out:
        assert r[0]["ref_cache_hit"] is False
        assert torch.allclose(r[0]["ref_train"], one_rank["cached"]["ref_train"], rtol=1e-6, atol=1e-5)
    # the two ranks saw disjoint halves of each global batch
    for s in range(1, STEPS + 1):
        a, b = out[0][0]["seen"][s]["indices"], out[1][0]["seen"][s]["indices"]
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert sorted(a + b) == sorted(one_rank["cached"]["seen"][s]["indices"])
    dp1, dp2 = step_records(one_rank["_dirs"]["cached"]), step_records(run)
    assert sorted(dp2) == list(range(1, STEPS + 1))
    assert dp2[1]["loss"] == pytest.approx(LN2, abs=1e-6)
    for s in dp1:
        for key in ["loss", "grad_norm"] + METRICS:
            assert abs(dp1[s][key] - dp2[s][key]) <= 1e-5 * max(1.0, abs(dp1[s][key])), (s, key, dp1[s][key], dp2[s][key])


@pytest.mark.slow
def test_interleaved_pipeline_matches_one_rank(one_rank, setup_dirs, two_rank):
    """PP=2 x VPP=2: the reference pre-pass (forward-only through the interleaved schedule, 3 micro-batches of eval
    pairs in one group) gives the 1-rank reference logps, and training follows the 1-rank concatenated run."""
    root = setup_dirs[0]
    _, out = two_rank
    for r in out:
        assert r[1]["exit"] is None
        assert torch.allclose(r[1]["ref_train"], one_rank["cached"]["ref_train"], rtol=1e-6, atol=1e-5)
    ref, vpp = step_records(one_rank["_dirs"]["concat"]), step_records(root / "pp2vpp2")
    assert sorted(vpp) == list(range(1, STEPS + 1))
    for s in ref:
        for key in ["loss", "grad_norm"] + METRICS:
            assert abs(ref[s][key] - vpp[s][key]) <= 1e-5 * max(1.0, abs(ref[s][key])), (s, key, ref[s][key], vpp[s][key])
    ev_ref, ev_vpp = eval_records(one_rank["_dirs"]["concat"]), eval_records(root / "pp2vpp2")
    assert sorted(ev_vpp) == sorted(ev_ref)
    for s in ev_ref:
        assert ev_vpp[s]["eval/accuracy"] == ev_ref[s]["eval/accuracy"]
        assert abs(ev_vpp[s]["eval/loss"] - ev_ref[s]["eval/loss"]) < 1e-5


@pytest.mark.slow
def test_context_parallel_matches_one_rank(one_rank, setup_dirs, two_rank):
    """CP=2 (both ranks hold the same pairs, half of every row each): the cached reference pre-pass equals the
    1-rank one, and training (on-the-fly reference; concatenated forward with the Triton loss) and the eval follow
    the 1-rank runs."""
    root = setup_dirs[0]
    _, out = two_rank
    for r in out:
        assert r[2]["exit"] is None and r[3]["exit"] is None
        assert torch.allclose(r[3]["ref_train"], one_rank["cached"]["ref_train"], rtol=1e-6, atol=1e-5)
    for name, base in (("cp2_otf", "otf"), ("cp2_fused_concat", "fused_concat")):
        ref, cp = step_records(one_rank["_dirs"][base]), step_records(root / name)
        assert sorted(cp) == list(range(1, STEPS + 1)), name
        for s in ref:
            # step 1 starts at the reference: every implicit reward is 0 up to float rounding (~1e-6, which differs
            # between layouts), so the accuracy there counts rounding signs; it is compared from step 2 on
            keys = ["loss", "grad_norm"] + [m for m in METRICS if s > 1 or m != "rewards/accuracy"]
            for key in keys:
                assert abs(ref[s][key] - cp[s][key]) <= 1e-5 * max(1.0, abs(ref[s][key])), (name, s, key, ref[s][key], cp[s][key])
        ev_ref, ev_cp = eval_records(one_rank["_dirs"][base]), eval_records(root / name)
        assert sorted(ev_cp) == sorted(ev_ref) and ev_ref, name
        for s in ev_ref:
            assert ev_cp[s]["eval/accuracy"] == ev_ref[s]["eval/accuracy"]
            assert abs(ev_cp[s]["eval/loss"] - ev_ref[s]["eval/loss"]) < 1e-5
