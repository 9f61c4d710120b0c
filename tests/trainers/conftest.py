"""Session fixtures for the trainer tests.

Process launches dominate the cost on 2 cores, so every in-process trainer run the tests need is done in two
launches (``run_distributed``): one single-rank launch and one 4-rank launch, each running its jobs one after
another. Every run starts from the SAME tiny random HF Llama (``model.init_hf``), so runs at different layouts
and splits are comparable step by step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import REF_STEPS, SPLITS_1RANK, SPLITS_DP2, base_overrides, make_tiny_hf, rank_jobs



@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    """CI-scale synthetic suite (generated once) under ``<tmp>/data``; the token cache goes next to it."""
    from megatron_tulu.data.synthetic import generate

    root = tmp_path_factory.mktemp("sft") / "data"
    generate(root, seed=0, scale="ci")
    return root


@pytest.fixture(scope="session")
def tiny_hf(sft_data) -> Path:
    from megatron_tulu.data.tokenizer import load_tokenizer

    vocab = len(load_tokenizer(sft_data / "tokenizer"))
    return make_tiny_hf(sft_data.parent / "hf_init", vocab)


def ov(sft_data, tiny_hf, run_dir, **extra) -> list[str]:
    """Overrides of a test run: base + init from the shared HF weights + ``extra``."""
    return base_overrides(sft_data, run_dir, **{"model.init_hf": str(tiny_hf), **extra})




def _split_job(sft_data, tiny_hf, root, name, mb, red, **extra):
    return ("fit", ov(sft_data, tiny_hf, root / name, **{
        "train.max_steps": 2, "train.micro_batch_size": mb, "train.loss_reduction": red,
        "checkpoint.interval": 0, "checkpoint.keep_last": 1, **extra}))


RECOMPUTE_RUNS = {
    "full": {"model.recompute": "full"},
    "selective": {"model.recompute": "selective"},
    # megatron's block method: the first 2 of the tiny model's 4 layers recomputed, the other 2 keep activations
    "full_block": {"model.recompute": "full", "model.recompute_layers": 2},
}


@pytest.fixture(scope="session")
def one_rank_runs(sft_data, tiny_hf, tmp_path_factory) -> dict[str, Path]:
    """Single-rank launch: the reference run (``ref``), the 1-rank split runs (``sum_8`` = 1x8, ...) and the
    activation-recompute runs (``recompute_<mode>`` for :data:`RECOMPUTE_RUNS`; 2 steps, otherwise as ``ref``), the
    export/init runs and ``unpacked`` (2 steps without packing)."""
    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("one_rank")
    jobs = [("fit", ov(sft_data, tiny_hf, root / "ref", **{"train.max_steps": REF_STEPS, "checkpoint.interval": 3}))]
    names = ["ref"]
    for name, s in SPLITS_1RANK.items():
        jobs.append(_split_job(sft_data, tiny_hf, root, name, s["mb"], s["red"]))
        names.append(name)
    for mode, extra in RECOMPUTE_RUNS.items():  # activation recompute: same numbers as the reference, recomputed
        jobs.append(_split_job(sft_data, tiny_hf, root, f"recompute_{mode}", 4, "sum", **extra))
        names.append(f"recompute_{mode}")
    # a finished run exported at its end, then two 1-step runs started from it: from the training checkpoint
    # (model.init_mcore = its run dir) and from its HF export (model.init_hf)
    exp = root / "export_run"
    jobs.append(("fit", ov(sft_data, tiny_hf, exp, **{"train.max_steps": 2, "checkpoint.interval": 0,
                                                       "checkpoint.export_hf": "true"})))
    jobs.append(("fit", ov(sft_data, tiny_hf, root / "from_mcore", **{
        "train.max_steps": 1, "checkpoint.interval": 0, "model.init_hf": "null", "model.init_mcore": str(exp)})))
    jobs.append(("fit", ov(sft_data, tiny_hf, root / "from_hf", **{
        "train.max_steps": 1, "checkpoint.interval": 0, "model.init_hf": str(exp / "hf")})))
    names += ["export_run", "from_mcore", "from_hf"]
    jobs.append(_split_job(sft_data, tiny_hf, root, "unpacked", 4, "sum", **{"train.packing": "false"}))
    names.append("unpacked")
    run_distributed(rank_jobs, 1, args=(jobs,), timeout_s=800)
    return {n: root / n for n in names}


@pytest.fixture(scope="session")
def four_rank_runs(sft_data, tiny_hf, tmp_path_factory) -> dict:
    """4-rank launch, in order: ``tp2pp2`` (6 steps, checkpoint at 3, HF export); ``reshard`` (TP=1 x DP=4, resumed
    from tp2pp2's step-3 checkpoint); ``tp2pp2_sp``/``tp2pp2_sp_fused`` (2 steps with sequence parallelism, the
    second with the fused log-prob head); the interleaved runs ``tp2pp2vpp2``, ``vpp_reshard``, ``pp2vpp3_emb``;
    ``sum_dp2``/``mean_dp2`` (PP=2 x DP=2, micro-batch 2); the context-parallel runs ``cp2tp2``, ``cp_reshard``,
    ``cp2tp2_sp``, ``cp4_unpacked``; then four setups that must fail: ``bad_batch`` (global 6
    over micro 2 x DP 4), ``fp8`` (fp8 on CPU), ``vpp_few_mb`` (1 micro-batch for PP=2 x VPP=2) and
    ``vpp_rank_files`` (the converter's PP=2 per-rank files into a PP=2 x VPP=2 run). Returns run dirs
    and errors."""
    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("four_rank")
    tp2pp2 = root / "tp2pp2"
    jobs = [
        ("fit", ov(sft_data, tiny_hf, tp2pp2, **{
            "train.max_steps": REF_STEPS, "checkpoint.interval": 3, "parallel.tp": 2, "parallel.pp": 2,
            "checkpoint.export_hf": "true"})),
        ("fit", ov(sft_data, tiny_hf, root / "reshard", **{
            "train.max_steps": REF_STEPS, "train.micro_batch_size": 2,
            "checkpoint.resume": str(tp2pp2 / "checkpoints" / "step_00000003")})),
    ]
    # sequence parallelism (local spec), with the LM head and with the fused log-prob head
    for name, extra in (("tp2pp2_sp", {}), ("tp2pp2_sp_fused", {"model.use_fused_logprob": "true"})):
        jobs.append(("fit", ov(sft_data, tiny_hf, root / name, **{
            "train.max_steps": 2, "checkpoint.interval": 0, "parallel.tp": 2, "parallel.pp": 2,
            "model.sequence_parallel": "true", **extra})))
    names = ["tp2pp2", "reshard", "tp2pp2_sp", "tp2pp2_sp_fused"]
    # interleaved 1F1B (two model chunks per rank, one layer each), checkpointed at step 3 and exported at the end;
    # its step-3 checkpoint resumed at TP=1 x DP=4 (one chunk); and PP=2 x VPP=3 with the embedding and the loss
    # counted as layers (6 slots: the first chunk holds only the embedding, the last only the head)
    vpp = root / "tp2pp2vpp2"
    jobs.append(("fit", ov(sft_data, tiny_hf, vpp, **{
        "train.max_steps": REF_STEPS, "checkpoint.interval": 3, "checkpoint.export_hf": "true",
        "parallel.tp": 2, "parallel.pp": 2, "parallel.vpp": 2})))
    jobs.append(("fit", ov(sft_data, tiny_hf, root / "vpp_reshard", **{
        "train.max_steps": REF_STEPS, "train.micro_batch_size": 2,
        "checkpoint.resume": str(vpp / "checkpoints" / "step_00000003")})))
    jobs.append(_split_job(sft_data, tiny_hf, root, "pp2vpp3_emb", 2, "sum", **{
        "parallel.pp": 2, "parallel.vpp": 3, "parallel.pp_account_embedding_loss": "true"}))
    names += ["tp2pp2vpp2", "vpp_reshard", "pp2vpp3_emb"]
    for name, s in SPLITS_DP2.items():
        jobs.append(_split_job(sft_data, tiny_hf, root, name, s["mb"], s["red"], **{"parallel.pp": 2}))
        names.append(name)
    # context parallelism: CP=2 x TP=2 (packed rows, block-causal mask split over CP), checkpointed at 3 and exported;
    # its step-3 checkpoint resumed at PP=2 x CP=2; CP=2 x TP=2 with sequence parallelism and selective recompute
    # (the fused log-prob head goes through the same target split and gather; under the Triton interpreter it
    # costs minutes per run, so its CI run is tp2pp2_sp_fused); CP=4 on unpacked rows (causal mask from positions)
    cp = root / "cp2tp2"
    jobs.append(("fit", ov(sft_data, tiny_hf, cp, **{
        "train.max_steps": REF_STEPS, "checkpoint.interval": 3, "checkpoint.export_hf": "true",
        "parallel.tp": 2, "parallel.cp": 2})))
    jobs.append(("fit", ov(sft_data, tiny_hf, root / "cp_reshard", **{
        "train.max_steps": REF_STEPS, "parallel.pp": 2, "parallel.cp": 2,
        "checkpoint.resume": str(cp / "checkpoints" / "step_00000003")})))
    jobs.append(_split_job(sft_data, tiny_hf, root, "cp2tp2_sp", 4, "sum", **{
        "parallel.tp": 2, "parallel.cp": 2, "model.sequence_parallel": "true", "model.recompute": "selective"}))
    jobs.append(_split_job(sft_data, tiny_hf, root, "cp4_unpacked", 4, "sum", **{
        "parallel.cp": 4, "train.packing": "false"}))
    names += ["cp2tp2", "cp_reshard", "cp2tp2_sp", "cp4_unpacked"]
    jobs.append(("error", ov(sft_data, tiny_hf, root / "bad_batch", **{
        "train.global_batch_size": 6, "train.micro_batch_size": 2})))
    jobs.append(("error", ov(sft_data, tiny_hf, root / "fp8", **{"model.fp8": "hybrid", "train.micro_batch_size": 2})))
    # PP=2 x VPP=2 x DP=2 with one micro-batch of 4 per rank: fewer than pp micro-batches for the interleaved schedule
    jobs.append(("error", ov(sft_data, tiny_hf, root / "vpp_few_mb", **{"parallel.pp": 2, "parallel.vpp": 2})))
    # the converter's per-rank files (an even PP=2 split) into a PP=2 x VPP=2 run: refused, pointing at HF / training
    # checkpoints, whose loaders reshard
    from megatron_tulu.checkpoint.convert import main as convert

    per_rank = root / "converted_pp2"
    assert convert(["hf-to-mcore", "--hf", str(tiny_hf), "--out", str(per_rank), "--tp", "1", "--pp", "2"]) == 0
    jobs.append(("error", ov(sft_data, tiny_hf, root / "vpp_rank_files", **{
        "parallel.pp": 2, "parallel.vpp": 2, "train.micro_batch_size": 2, "model.init_hf": "null",
        "model.init_mcore": str(per_rank)})))
    out = run_distributed(rank_jobs, 4, args=(jobs,), timeout_s=900)[0]
    return {**{n: root / n for n in names}, "bad_batch_error": out[-4], "bad_batch_dir": root / "bad_batch",
            "fp8_error": out[-3], "vpp_few_mb_error": out[-2], "vpp_rank_files_error": out[-1]}

