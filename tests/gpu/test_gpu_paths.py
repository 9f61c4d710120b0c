"""GPU-only checks (skipped on CPU with a reason by tests/conftest.py; run them on the lent H100/H200).

    python -m pytest -q tests/gpu
"""


import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("bwd_chunk_bytes", [256 * 2**20, 2**20])  # one vocab chunk; 63 chunks of 512 columns
def test_fused_logprob_compiles_and_matches_reference_in_bf16(bwd_chunk_bytes):
    from kernels.fused_logprob import fused_linear_logprob, linear_logprob_reference

    torch.manual_seed(0)
    n, d, v = 1000, 512, 32064  # N and V not multiples of the blocks
    h = (torch.randn(n, d, device="cuda") * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(v, d, device="cuda") * 0.05).bfloat16().requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda")
    t[::7] = -100
    lp, ent = fused_linear_logprob(h, w, t, temperature=0.8, with_entropy=True, bwd_chunk_bytes=bwd_chunk_bytes)
    (lp.sum() + ent.sum()).backward()
    dh, dw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    rlp, rent = linear_logprob_reference(h64, w64, t, temperature=0.8, with_entropy=True)
    (rlp.sum() + rent.sum()).backward()
    assert torch.allclose(lp.double(), rlp, atol=2e-2, rtol=1e-2)
    assert torch.allclose(ent.double(), rent, atol=2e-2, rtol=1e-2)
    assert torch.allclose(dh.double(), h64.grad, atol=5e-2, rtol=5e-2)
    assert torch.allclose(dw.double(), w64.grad, atol=5e-2, rtol=5e-2)


def test_fused_dpo_loss_matches_reference_on_cuda():
    from kernels.dpo_loss import dpo_loss_reference, fused_dpo_loss

    torch.manual_seed(0)
    b, t = 16, 512
    pol = (-torch.rand(2 * b, t, device="cuda")).requires_grad_()
    ref = -torch.rand(2 * b, t, device="cuda")
    mask = torch.rand(2 * b, t, device="cuda") > 0.3
    for loss_type in ("dpo", "dpo_norm", "ipo", "simpo"):
        l1, _ = fused_dpo_loss(pol, ref, mask, loss_type=loss_type, beta=0.5)
        g1 = torch.autograd.grad(l1, pol)[0]
        l2, _ = dpo_loss_reference(pol, ref, mask, loss_type=loss_type, beta=0.5)
        g2 = torch.autograd.grad(l2, pol)[0]
        assert torch.allclose(l1, l2, atol=1e-5, rtol=1e-4), loss_type
        assert torch.allclose(g1, g2, atol=1e-6, rtol=1e-4), loss_type


def _bf16_step(impl):
    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.models.logprobs import vocab_parallel_logprobs
    from megatron_tulu.models.presets import get_preset
    from megatron_tulu.parallel import ParallelDims, init_distributed

    init_distributed(ParallelDims(world=1))
    preset = get_preset("tiny").with_(vocab_size=1000)
    model = build_model(preset, 1, 1, ModelOptions(impl=impl, dtype="bf16"))
    ids = torch.randint(0, 1000, (2, 128), device="cuda")
    pos = torch.arange(128, device="cuda").expand(2, 128)
    logits = model(ids, pos, None)
    lp = vocab_parallel_logprobs(logits[:, :-1], ids[:, 1:], preset.vocab_size)
    (-lp.sum()).backward()
    return float(lp.mean()), all(p.grad is not None or getattr(p, "main_grad", None) is not None for p in model.parameters())


def test_megatron_bf16_forward_backward_on_gpu_local_spec():
    from megatron_tulu.testing import run_distributed

    mean_lp, grads = run_distributed(_bf16_step, 1, args=("local",), env={"MEGATRON_TULU_DEVICE": "cuda"})[0]
    assert -10 < mean_lp < 0 and grads


def test_transformer_engine_spec_when_installed():
    pytest.importorskip("transformer_engine", reason="Transformer Engine is only in the NGC container")
    from megatron_tulu.testing import run_distributed

    mean_lp, grads = run_distributed(_bf16_step, 1, args=("te",), env={"MEGATRON_TULU_DEVICE": "cuda"})[0]
    assert -10 < mean_lp < 0 and grads


def _packed_thd_vs_alone(impl):
    """bf16 on CUDA: two documents packed in one row and run as THD (``models.packed``) against each run alone;
    also the same row without boundaries (the control). Returns the two largest |logit differences|."""
    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.models.packed import packed_seq_params
    from megatron_tulu.models.presets import get_preset
    from megatron_tulu.parallel import ParallelDims, init_distributed

    init_distributed(ParallelDims(world=1))
    torch.manual_seed(0)
    preset = get_preset("tiny").with_(vocab_size=1000)
    model = build_model(preset, 1, 1, ModelOptions(impl=impl, dtype="bf16"))
    model.eval()
    docs = [torch.randint(0, 1000, (1, n), device="cuda") for n in (48, 80)]
    row = torch.cat(docs, dim=1)
    pos = torch.arange(128, device="cuda").unsqueeze(0)
    with torch.no_grad():
        thd = model(row, pos, None, packed_seq_params=packed_seq_params([[0, 48, 128]], 128, "cuda"))[0].float()
        plain = model(row, pos, None)[0].float()
        alone = [model(d, torch.arange(d.shape[1], device="cuda").unsqueeze(0), None)[0].float() for d in docs]
    return (float((thd[48:] - alone[1]).abs().max()), float((thd[:48] - alone[0]).abs().max()),
            float((plain[48:] - alone[1]).abs().max()))


@pytest.mark.parametrize("impl", ["local", "te"])
def test_packed_rows_as_thd_keep_documents_apart(impl):
    """The THD path on CUDA for both specs (TE: its varlen attention with ``cu_seqlens``; container only): the
    second document's logits equal it run alone, and without boundaries they do not."""
    if impl == "te":
        pytest.importorskip("transformer_engine", reason="Transformer Engine is only in the NGC container")
    from megatron_tulu.testing import run_distributed

    second, first, control = run_distributed(_packed_thd_vs_alone, 1, args=(impl,),
                                             env={"MEGATRON_TULU_DEVICE": "cuda"})[0]
    assert first < 0.1 and second < 0.1, (first, second)
    assert control > 5 * max(second, 1e-3), (control, second)


def _open_cuda_handle(blob: bytes, q) -> None:
    """Child process: open the parent's CUDA IPC handle as the colocated engine worker does, copy it, write into it."""
    from megatron_tulu.rollout.ipc import device_key, open_shared

    shared = open_shared(blob)
    copy = shared.clone()
    shared[0] = -1.0  # the handle is the parent's memory: the parent must see this
    torch.cuda.synchronize()
    q.put((copy.cpu().tolist(), str(shared.device), device_key()))
    del shared


def test_colocated_cuda_ipc_handle_opens_in_another_process():
    """Colocated weight sync on one GPU (issue 24): trainer rank 0 hands a bucket to the vLLM worker on its own GPU
    by CUDA IPC handle (``rollout.ipc.share_tensor`` / ``open_shared``: ``rebuild_cuda_tensor`` on the receiver's
    device index). Another process opens the handle, reads the bucket's bytes and writes into the same memory."""
    import multiprocessing as mp

    from megatron_tulu.rollout.ipc import device_key, share_tensor

    bucket = torch.arange(4096, dtype=torch.float32, device="cuda")[1024:3072]  # an offset inside a block
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=_open_cuda_handle, args=(share_tensor(bucket), q))
    child.start()
    try:
        values, device, key = q.get(timeout=120)
    finally:
        child.join(timeout=30)
    assert values == list(range(1024, 3072)) and device.startswith("cuda") and key == device_key()
    torch.cuda.synchronize()
    assert bucket[0].item() == -1.0
