"""Planner formulas against parameter counts and the closed forms in Korthikanti et al. 2022."""

import pytest

from megatron_tulu.models.presets import get_preset
from megatron_tulu.plan import memory as M
from megatron_tulu.plan import throughput as T


@pytest.mark.parametrize("name", ["tiny", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b"])
def test_params_per_gpu_sums_back_to_param_count(name):
    p = get_preset(name)
    assert M.params_per_gpu(p, 1, 1) == p.param_count()
    assert M.layer_params(p) * p.num_layers + 2 * p.vocab_size * p.hidden_size + p.hidden_size == p.param_count()
    # TP shards everything but the (replicated) norm weights.
    tp = 8 if p.num_query_groups % 8 == 0 else 2
    norms = 2 * p.hidden_size * p.num_layers + p.hidden_size
    assert M.params_per_gpu(p, tp, 1) == pytest.approx((p.param_count() - norms) / tp + norms, abs=2)
    # With PP dividing the layers, the stages hold all layers once plus embedding on first / head on last.
    pp = 2
    stage = M.params_per_gpu(p, 1, pp)
    assert stage == int(p.num_layers // pp * M.layer_params(p) + p.vocab_size * p.hidden_size + p.hidden_size)


def test_known_model_sizes_in_billions():
    # Published sizes: 8.03B, 70.6B, 405.9B (the presets match transformers' counts exactly).
    assert get_preset("llama3.1-8b").param_count() / 1e9 == pytest.approx(8.03, abs=0.01)
    assert get_preset("llama3.1-70b").param_count() / 1e9 == pytest.approx(70.55, abs=0.01)
    assert get_preset("llama3.1-405b").param_count() / 1e9 == pytest.approx(405.85, abs=0.01)


@pytest.mark.parametrize("dp", [1, 8, 64])
def test_distributed_optimizer_bytes_per_param(dp):
    # megatron dist_optimizer.md: bf16 params + fp32 grads -> 6 + 12/d bytes per parameter.
    p = get_preset("llama3.1-8b")
    w, g, o = M.model_state(p, 1, 1, dp)
    assert (w + g + o) / p.param_count() == pytest.approx(6 + 12 / dp)
    assert M.state_bytes_per_param(dp) == pytest.approx(6 + 12 / dp)
    assert M.state_bytes_per_param(dp, grad_dtype_bytes=2) == pytest.approx(4 + 12 / dp)


def _gpt_shape(h=4096, a=32):
    return M.LayerShape(hidden=h, ffn=4 * h, heads=a, kv_heads=a, gated_mlp=False, dropout=True, flash_attention=False)


@pytest.mark.parametrize("t", [1, 2, 8])
def test_korthikanti_closed_forms(t):
    s, b, h, a = 2048, 2, 4096, 32
    sh = _gpt_shape(h, a)
    sbh = s * b * h
    # Eq. 1 / 2: no parallelism -> sbh(34 + 5as/h); TP without SP -> sbh(10 + 24/t + 5as/(ht)).
    assert M.layer_activation_bytes(sh, s, b, t, sp=False) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    # Eq. 4: TP + SP -> sbh/t (34 + 5as/h); eq. 5: + selective recompute -> 34 sbh / t; full: 2sbh/t.
    assert M.layer_activation_bytes(sh, s, b, t, sp=True) == pytest.approx(sbh / t * (34 + 5 * a * s / h))
    assert M.layer_activation_bytes(sh, s, b, t, sp=True, recompute="selective") == pytest.approx(34 * sbh / t)
    assert M.layer_activation_bytes(sh, s, b, t, sp=True, recompute="full") == pytest.approx(2 * sbh / t)


def test_llama_layer_activations_and_pipeline():
    p = get_preset("llama3.1-8b")
    sh = M.LayerShape.from_preset(p)
    s, b, h, f = 4096, 1, p.hidden_size, p.ffn_hidden_size
    # 8 sbh in the SP region, Q/K/V (GQA: K,V are 1/4 of Q), attention out, SwiGLU 6sbf, fp32 LSE per head.
    expect = 8 * s * b * h + 2 * s * b * h * (1 + 2 * 8 / 32) + 2 * s * b * h + 6 * s * b * f + 4 * 32 * s * b
    assert M.layer_activation_bytes(sh, s, b) == pytest.approx(expect)
    one = M.activation_bytes(p, seq=s, micro_batch=1, tp=1, pp=1, cp=1, num_microbatches=8, recompute="none")
    assert one == pytest.approx(32 * expect + M.logits_bytes(p, s, 1, 1) + 2 * s * h)
    # 1F1B: the first stage holds pp micro-batches of L/pp layers = L layers' worth (Korthikanti 4.2.3).
    pp4 = M.activation_bytes(p, seq=s, micro_batch=1, tp=1, pp=4, cp=1, num_microbatches=8, recompute="none")
    assert pp4 == pytest.approx(max(32 * expect + 4 * 2 * s * h, 8 * expect + M.logits_bytes(p, s, 1, 1)))
    # CP halves the per-GPU sequence; recompute strictly lowers the total.
    cp2 = M.activation_bytes(p, seq=s, micro_batch=1, tp=1, pp=1, cp=2, num_microbatches=8, recompute="none")
    assert cp2 == pytest.approx(one / 2, rel=0.01)
    full = M.activation_bytes(p, seq=s, micro_batch=1, tp=1, pp=1, cp=1, num_microbatches=8, recompute="full")
    # Full recompute: each layer keeps its input, plus one layer's activations while it is recomputed.
    assert full == pytest.approx(32 * 2 * s * h + expect + M.logits_bytes(p, s, 1, 1) + 2 * s * h)
    assert full < one
    # Block recompute of 8 of the 32 layers: those keep their input, the other 24 everything (+ the recompute peak).
    block = M.activation_bytes(p, seq=s, micro_batch=1, tp=1, pp=1, cp=1, num_microbatches=8, recompute="full",
                               recompute_layers=8)
    assert block == pytest.approx(8 * 2 * s * h + 24 * expect + expect + M.logits_bytes(p, s, 1, 1) + 2 * s * h)
    assert M.recomputed_fraction("full", 32, 8) == 0.25 and M.recomputed_fraction("full", 4, 8) == 1.0
    assert M.recomputed_fraction("full", 32) == 1.0 and M.recomputed_fraction("selective", 32, 8) == 0.0
    fused = M.logits_bytes(p, s, 1, 1, fused_logprob=True)
    assert M.logits_bytes(p, s, 1, 1) - fused == pytest.approx(6 * s * p.vocab_size - 8 * s)


def test_engine_kv_cache_405b_tp16():
    p = get_preset("llama3.1-405b")
    # 8 KV heads over TP16: vLLM replicates, 1 head per GPU: 2 (K,V) * 126 layers * 128 dims * 2 bytes.
    assert M.kv_cache_bytes_per_token(p, 16) == 2 * 126 * 128 * 2
    em = M.engine_memory(p, 16, 79.1 * M.GIB, seq=2048)
    assert em.weights == pytest.approx(2 * p.param_count() / 16)
    assert em.max_concurrent_seqs > 64
    assert M.engine_memory(p, 8, 79.1 * M.GIB, seq=2048).max_concurrent_seqs == 0  # 101 GB of weights per GPU


def test_flops_and_comm():
    p = get_preset("llama3.1-8b")
    n_no_embed = p.param_count() - p.vocab_size * p.hidden_size
    assert T.flops_per_token(p, 4096) == pytest.approx(6 * n_no_embed + 6 * 32 * 4096 * 4096)
    assert T.ring_allreduce_bytes(100.0, 1) == 0 and T.ring_allreduce_bytes(100.0, 4) == pytest.approx(150.0)
    c = T.comm_volume(p, seq=4096, micro_batch=1, num_microbatches=4, tp=1, pp=1, cp=1, dp=8, recompute="none")
    assert c["tp"] == c["pp"] == c["cp"] == 0
    assert c["dp"] == pytest.approx(7 / 8 * p.param_count() * 6)
    c2 = T.comm_volume(p, seq=4096, micro_batch=1, num_microbatches=4, tp=4, pp=2, cp=1, dp=1, recompute="full")
    assert c2["tp"] == pytest.approx(16 * 4 * 6 * 1.5 * 2 * 4096 * 4096) and c2["pp"] > 0


def test_calibration_file(tmp_path):
    f = tmp_path / "r.json"
    f.write_text('{"results": [{"mfu": 0.30, "gpu": "h100-80gb", "precision": "bf16"}, '
                 '{"mfu": 0.50, "gpu": "h100-80gb", "precision": "bf16"}, {"mfu": 0.9, "precision": "fp8"}]}')
    assert T.load_calibration(f, gpu="h100-80gb") == pytest.approx(0.40)
    assert T.load_calibration(f, precision="fp8") == pytest.approx(0.9)
    with pytest.raises(ValueError, match="no record"):
        T.load_calibration(f, gpu="h200")
    f.write_text('[{"tflops": 1}]')
    with pytest.raises(ValueError, match="record 0 has no 'mfu'"):
        T.load_calibration(f)


def test_mfu_estimate_logged_on_gpu_is_model_flops_over_bf16_peak():
    from megatron_tulu.models.presets import get_preset
    from megatron_tulu.plan.hardware import GPUS, gpu_from_device_name
    from megatron_tulu.plan.throughput import flops_per_token, model_flops_utilization

    assert gpu_from_device_name("NVIDIA H100 80GB HBM3") is GPUS["h100-80gb"]
    assert gpu_from_device_name("NVIDIA H200") is GPUS["h200"]
    assert gpu_from_device_name("NVIDIA A100-SXM4-80GB") is GPUS["a100-80gb"]
    assert gpu_from_device_name("Some other accelerator") is None
    p = get_preset("llama3.1-8b")
    # Llama 3 8B at seq 4096: 6N (N without the input embedding: 7.50e9 -> 4.50e10) + causal attention
    # (12 * 32 layers * 4096 * 4096 / 2 = 3.2e9) = 4.8e10 FLOP/token; 8,000 tokens/s/GPU on a 989 TFLOP/s H100
    # is then ~39 % MFU
    f = flops_per_token(p, 4096)
    assert 4.80e10 < f < 4.85e10
    mfu = model_flops_utilization(p, 4096, 8000.0, GPUS["h100-80gb"].bf16_tflops)
    assert mfu == f * 8000.0 / 989e12 and 0.38 < mfu < 0.40
