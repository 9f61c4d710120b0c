"""Model-regression tests: the planner against published measurements (benchmarks/planner_calibration.md), and the
decode-time model on hand-computed numbers. The hardware constants and efficiencies are the fixed ones in
``megatron_tulu.plan.hardware``; these tests fail if a change to the model moves an estimate out of ±25 %."""

import math

import pytest

from megatron_tulu.models.presets import get_preset
from megatron_tulu.plan import PlanRequest, enumerate_layouts
from megatron_tulu.plan import throughput as T
from megatron_tulu.plan.__main__ import main as cli_main
from megatron_tulu.plan.hardware import EFFICIENCY, GPUS

H100 = GPUS["h100-80gb"]
P8 = get_preset("llama3.1-8b")

# NeMo-RL v0.5 performance summary, DGX-H100 BF16, Llama-3.1-8B-Instruct GRPO on OpenMathInstruct-2, G-GBS 2048,
# T-GBS 512 (recipes grpo-llama3.1-8b-instruct-2n8g[-async-1off].yaml: full activation recompute, sequence packing at
# 4096 tokens, KL reference, colocated on-policy at gpu_memory_utilization 0.6 with train PP2, one-step off-policy on
# 8 + 8 GPUs at 0.8 with train PP1). Mean prompt = tokens/s/GPU x step x GPUs / 2048 - mean response.
NEMO_RL = dict(model="llama3.1-8b", gpus=16, stage="rlvr", algorithm="grpo", global_batch=2048, train_global_batch=512,
               max_tokens_per_microbatch=4096, engine_tp=1, reference_on_host=True,
               fixed={"tp": 1, "cp": 1, "recompute": "full"})
ON_POLICY = dict(NEMO_RL, prompt_len=127, response_len_dist="exp:1019:3969", placement="colocated", offload_trainer=True,
                 gpu_memory_utilization=0.6, fixed={**NEMO_RL["fixed"], "pp": 2})
OFF_POLICY = dict(NEMO_RL, prompt_len=131, response_len_dist="exp:1123:3965", off_policy=True, num_engines=8,
                  gpu_memory_utilization=0.8, fixed={**NEMO_RL["fixed"], "pp": 1})


def _best(**kw):
    ok = [l for l in enumerate_layouts(PlanRequest(**kw)) if l.feasible]
    assert ok, "no feasible layout"
    return ok[0]


@pytest.mark.parametrize("kw, published", [(ON_POLICY, 92.8), (OFF_POLICY, 64.8)], ids=["on_policy", "one_step_off"])
def test_nemo_rl_8b_grpo_step_time_within_25_percent(kw, published):
    lay = _best(**kw)
    assert lay.placement == ("colocated" if not kw.get("off_policy") else "disaggregated")
    assert 0.75 <= lay.time_s["total_s"] / published <= 1.25, lay.time_s["total_s"]


# Megatron-Bridge 25.11 performance summary, DGX-H100 FP8-CS pretraining at seq 8192, with what its H100 recipes
# (perf_recipes/llama/h100/llama3.py, llama31.py; _common.py) state: grads reduced in bf16 (grad_reduce_in_fp32 False),
# TE's fused cross entropy, 8B: full recompute of 5 of 32 layers (block) and no TP; 70B and 405B: no recompute, TP
# communication overlapped by userbuffers.
MB = dict(stage="pretrain", seq=8192, fp8=True, grad_dtype_bytes=2)
MB_ROWS = {
    "8b": (dict(MB, model="llama3.1-8b", gpus=8, global_batch=128, fused_logprob=True, recompute_layers=5,
                fixed={"tp": 1, "pp": 1, "cp": 1, "recompute": "full"}), 14451),
    "70b": (dict(MB, model="llama3.1-70b", gpus=64, global_batch=128, vpp=5, tp_comm_overlap=True,
                 fixed={"tp": 4, "pp": 8, "cp": 1, "recompute": "none"}), 1602),
    "405b": (dict(MB, model="llama3.1-405b", gpus=1024, global_batch=512, vpp=8, tp_comm_overlap=True,
                  fixed={"tp": 8, "pp": 8, "cp": 2, "recompute": "none"}), 292),
}


@pytest.mark.parametrize("size", list(MB_ROWS))
def test_megatron_bridge_fp8_pretrain_throughput_within_25_percent(size):
    kw, published = MB_ROWS[size]
    assert 0.75 <= _best(**kw).tokens_per_s_per_gpu / published <= 1.25


def test_recipe_settings_are_what_moves_the_large_rows():
    """Without the recipe's bf16 grads the 70B layout only fits with full recompute (charged 4/3) and its exposed
    TP traffic: the 0.70 the first calibration reported. The settings are the workload's, not a tuning."""
    kw, published = MB_ROWS["70b"]
    plain = _best(**{**kw, "grad_dtype_bytes": 4, "tp_comm_overlap": False, "fixed": {"tp": 4, "pp": 8, "cp": 1}})
    assert plain.recompute == "full" and plain.tokens_per_s_per_gpu / published < 0.75


def test_partial_recompute_costs_its_share_of_a_forward():
    kw, _ = MB_ROWS["8b"]
    part = _best(**kw)
    full = _best(**{**kw, "recompute_layers": 0})
    assert part.time_s["recomputed_layer_fraction"] == pytest.approx(5 / 32)
    # compute is flops x (1 + fraction / 3): 5/32 of a forward extra instead of a whole one
    assert part.time_s["compute_s"] / full.time_s["compute_s"] == pytest.approx((1 + 5 / 96) / (4 / 3))
    mem = part.memory_gib
    assert mem["act_none"] > mem["act_full"] > mem["act_selective"] * 27 / 32  # 27 layers keep everything


def test_old_padded_estimate_is_what_the_issue_reported():
    """Padded 4096-token rows and half the GPUs generating: the ~238 s the issue started from (the model change
    since is the forward-only passes no longer paying for recompute and the decode-time generation model)."""
    lay = _best(model="llama3.1-8b", gpus=16, stage="rlvr", global_batch=2048, prompt_len=256, response_len=1019)
    assert lay.placement == "disaggregated" and lay.time_s["train_s"] > 150
    packed = _best(model="llama3.1-8b", gpus=16, stage="rlvr", global_batch=2048, prompt_len=256, response_len=1019,
                   max_tokens_per_microbatch=4096)
    assert packed.time_s["train_s"] < lay.time_s["train_s"] / 2


def test_project_colocated_packed_layout_meets_the_60s_goal(capsys):
    kw = dict(model="llama3.1-8b", gpus=16, stage="rlvr", global_batch=2048, prompt_len=127,
              response_len_dist="exp:1019:3969", max_tokens_per_microbatch=4096, placement="colocated")
    best = _best(**kw)
    assert best.time_s["total_s"] <= 60
    assert best.time_s["total_s"] < _best(**{**kw, "placement": "disaggregated"}).time_s["total_s"]
    assert cli_main(["--model", "llama3.1-8b", "--gpus", "16", "--stage", "rlvr", "--global-batch", "2048",
                     "--prompt-len", "127", "--response-len-dist", "exp:1019:3969", "--max-tokens-per-microbatch",
                     "4096", "--placement", "colocated", "--goal-s", "60", "--top", "1", "--show-rejected", "0"]) == 0
    out = capsys.readouterr().out
    assert "colocated with trainer" in out and "goal 60 s: met by" in out
    assert "step ~" in out and "= generate " in out and "+ train " in out and "+ weight sync " in out


# ------------------------------------------------------------------ the decode-time model on hand-computed numbers


def test_decode_step_is_weights_plus_kv_over_hbm():
    # 8B on one H100, 1 sequence with 1,000 tokens of context: bytes = 2 * 8.03e9 + 131,072 * 1,000
    # (2 K/V x 32 layers x 8 heads x 128 dims x 2 B); memory-bound at 3.35 TB/s x 0.8 = 2.68 TB/s.
    n = P8.param_count()
    step = T.decode_step_time(P8, H100, engine_tp=1, live_seqs=1, context_tokens=1000)
    expect = (2 * n + 131072 * 1000) / (3350e9 * 0.8) + EFFICIENCY.decode_step_overhead_s
    assert step == pytest.approx(expect)
    assert 6.0e-3 < step - EFFICIENCY.decode_step_overhead_s < 6.1e-3


def test_decode_turns_compute_bound_at_large_batches():
    # 4,096 sequences, no context: 2 * 7.50e9 matmul params * 4,096 FLOPs over 989 TFLOP/s x 0.5 = 124 ms,
    # against 16.06 GB / 2.68 TB/s = 6 ms of weight reads.
    n_matmul = P8.param_count() - P8.vocab_size * P8.hidden_size
    step = T.decode_step_time(P8, H100, engine_tp=1, live_seqs=4096, context_tokens=0)
    assert step == pytest.approx(2 * n_matmul * 4096 / (989e12 * 0.5) + EFFICIENCY.decode_step_overhead_s)


def test_decode_tp_adds_two_allreduces_per_layer_and_halves_weights():
    one = T.decode_step_time(P8, H100, engine_tp=1, live_seqs=1, context_tokens=0)
    two = T.decode_step_time(P8, H100, engine_tp=2, live_seqs=1, context_tokens=0)
    ovh = EFFICIENCY.decode_step_overhead_s
    assert two - ovh == pytest.approx((one - ovh) / 2 + 2 * 32 * 20e-6)


def test_generation_fixed_lengths_one_wave():
    # 8 sequences of 100 tokens after 50-token prompts on one engine: 100 decode steps, the context growing from
    # 8 x 50 to 8 x 150 tokens (chunk midpoints), plus prefill 8 x 50 tokens of forward FLOPs at 50 % of the peak.
    g = T.generation_time(P8, H100, engine_tp=1, num_engines=1, num_sequences=8, prompt_len=50, response_len=100,
                          max_concurrent_seqs=100, gpus_per_node=8)
    assert g["decode_steps"] == 100 and g["concurrency"] == 8 and g["rounds"] == 1
    expect = sum(16 * T.decode_step_time(P8, H100, engine_tp=1, live_seqs=8, context_tokens=8 * (50 + s + 8))
                 for s in range(0, 96, 16))
    expect += 4 * T.decode_step_time(P8, H100, engine_tp=1, live_seqs=8, context_tokens=8 * (50 + 96 + 2))
    assert g["decode_s"] == pytest.approx(expect)
    n_matmul = P8.param_count() - P8.vocab_size * P8.hidden_size
    assert g["prefill_s"] == pytest.approx(8 * 50 * (2 * n_matmul + 2 * 32 * 50 * 4096) / (989e12 * 0.5))


def test_generation_batch_from_kv_budget_and_continuous_batching():
    # KV budget of 1,000 tokens holds 1000 // (50 + 100) = 6 sequences; 12 sequences run as two waves of 100 steps.
    g = T.generation_time(P8, H100, engine_tp=1, num_engines=1, num_sequences=12, prompt_len=50, response_len=100,
                          max_concurrent_seqs=0, gpus_per_node=8, kv_tokens=1000)
    assert g["concurrency"] == 6 and g["decode_steps"] == 200
    # The longest response sets the decode steps; short ones thin the batch.
    d = T.LengthDist.parse("uniform:10:200")
    g2 = T.generation_time(P8, H100, engine_tp=1, num_engines=1, num_sequences=64, prompt_len=50, response_len=0,
                           max_concurrent_seqs=1000, gpus_per_node=8, response_dist=d)
    assert g2["decode_steps"] == g2["max_response"] == max(d.sample(64))


def test_length_distributions():
    u = T.LengthDist.parse("uniform:64:2048")
    assert u.mean == 1056 and u.mean_sq == pytest.approx((64**2 + 64 * 2048 + 2048**2) / 3)
    e = T.LengthDist.parse("1019:3969")
    assert e.kind == "exp" and e.mean == 1019
    xs = e.sample(20000)
    assert sum(xs) / len(xs) == pytest.approx(1019, rel=0.01) and max(xs) <= 3969
    assert T.LengthDist.parse("fixed:512").sample(3) == [512, 512, 512]
    for bad in ("uniform:5", "exp:3000:4000", "x:y"):
        with pytest.raises(ValueError, match="response length distribution"):
            T.LengthDist.parse(bad)
    mean, attn = T.packed_seq_stats(100, T.LengthDist.parse("fixed:300"))
    assert mean == attn == 400


def test_colocated_sync_is_ipc_plus_host_traffic():
    s = T.colocated_sync_time(P8, H100, engine_tp=1, trainer_tp=1, trainer_pp=1, offload_bytes_per_gpu=10e9,
                              sleep_level=1)
    w = 2 * P8.param_count()
    assert s["gather_s"] == 0 and s["ipc_copy_s"] == pytest.approx(2 * w / (3350e9 * 0.8))
    assert s["engine_sleep_wake_s"] == pytest.approx(2 * w / 25e9)
    assert s["trainer_offload_s"] == pytest.approx(2 * 10e9 / 25e9)
    s2 = T.colocated_sync_time(P8, H100, engine_tp=1, trainer_tp=1, trainer_pp=2, sleep_level=2)
    assert s2["engine_sleep_wake_s"] == 0 and s2["gather_s"] == pytest.approx(w / 2 / 450e9)
    assert s["node_forward_s"] == 0  # one node; over two, rank 0 forwards every tensor to the other node once
    s3 = T.colocated_sync_time(P8, H100, engine_tp=1, trainer_tp=1, trainer_pp=2, sleep_level=2, nodes=2)
    assert s3["node_forward_s"] == pytest.approx(w / 45e9) and s3["total_s"] == pytest.approx(s2["total_s"] + w / 45e9)


def test_packed_rows_cut_trainer_tokens_and_off_policy_overlaps():
    base = dict(model="llama3.1-8b", gpus=16, stage="rlvr", global_batch=256, prompt_len=128,
                response_len_dist="exp:512:3968", engine_tp=1, num_engines=8, reference_on_host=True, fixed={"tp": 1, "pp": 1, "cp": 1})
    padded = _best(**base)
    packed = _best(**base, max_tokens_per_microbatch=4096)
    assert packed.time_s["train_detail"]["tokens"] == 256 * (128 + 512)
    assert padded.time_s["train_detail"]["tokens"] == 256 * 4096
    off = _best(**base, max_tokens_per_microbatch=4096, off_policy=True)
    t = off.time_s
    assert t["total_s"] == pytest.approx(max(t["generate_s"], t["train_s"]) + t["weight_sync_s"])
    with pytest.raises(ValueError, match="off_policy needs placement=disaggregated"):
        enumerate_layouts(PlanRequest(**base, off_policy=True, placement="colocated"))


def test_recompute_pin_and_forward_only_passes():
    # Full recompute multiplies the trained passes by 4/3, not the log-prob / reference forwards.
    flops = 1e18
    kw = dict(gpus=8, gpu=H100, mfu=0.4, comm={"tp": 0, "pp": 0, "cp": 0, "dp": 0}, tp=1, pp=1, cp=1,
              num_microbatches=1, gpus_per_node=8)
    full = T.train_step_time(flops, recompute="full", forward_only_flops=flops / 3, **kw)
    assert full["compute_s"] == pytest.approx((flops * 4 / 3 + flops / 3) / (8 * 989e12 * 0.4))
    assert math.isclose(T.train_step_time(flops, recompute="none", **kw)["compute_s"], flops / (8 * 989e12 * 0.4))
