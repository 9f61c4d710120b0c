"""Fakes for the weight-sync tests of tests/gpu_readiness: a vLLM-like worker that runs the real worker
extension (:class:`~megatron_tulu.rollout.vllm_worker_ext.WeightSyncWorkerExtension`) over a real gloo
stateless group, an engine that hosts such workers in threads, and a memory tracker.

What is fake is only vLLM: ``FakeWorker.reload_weights`` stands for ``vllm.v1.worker.gpu_worker.Worker.reload_weights``
and consumes the weights iterator the way vLLM 0.32's layerwise reload does
(``vllm/model_executor/model_loader/reload/layerwise.py``): a module's loaded tensors are kept (as references,
``info.loaded_weights``) until every part of that module arrived -- q/k/v for ``qkv_proj``, gate/up for
``gate_up_proj`` -- then loaded into the parameters and dropped.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from megatron_tulu.rollout.vllm_worker_ext import WeightSyncWorkerExtension


def tiny_state(layers: int = 12, hidden: int = 32, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """HF-named fp32 tensors of a small Llama-like model, in checkpoint order (q, k, v, o, gate, up, down, norms)."""
    g = torch.Generator().manual_seed(seed)
    h, kv, ff = hidden, hidden // 2, 2 * hidden
    items = [("model.embed_tokens.weight", torch.randn(40, h, generator=g))]
    for i in range(layers):
        p = f"model.layers.{i}."
        items += [
            (p + "self_attn.q_proj.weight", torch.randn(h, h, generator=g)),
            (p + "self_attn.k_proj.weight", torch.randn(kv, h, generator=g)),
            (p + "self_attn.v_proj.weight", torch.randn(kv, h, generator=g)),
            (p + "self_attn.o_proj.weight", torch.randn(h, h, generator=g)),
            (p + "mlp.gate_proj.weight", torch.randn(ff, h, generator=g)),
            (p + "mlp.up_proj.weight", torch.randn(ff, h, generator=g)),
            (p + "mlp.down_proj.weight", torch.randn(h, ff, generator=g)),
            (p + "input_layernorm.weight", torch.randn(h, generator=g)),
            (p + "post_attention_layernorm.weight", torch.randn(h, generator=g)),
        ]
    items += [("model.norm.weight", torch.randn(h, generator=g)), ("lm_head.weight", torch.randn(40, h, generator=g))]
    return items


def write_checkpoint(items, model_dir: Path) -> Path:
    """The engine's checkpoint: the worker extension validates metadata against its safetensors headers."""
    from safetensors.torch import save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    save_file({n: t.contiguous() for n, t in items}, str(model_dir / "model.safetensors"))
    return model_dir


def _module_of(name: str) -> str:
    """vLLM's fused module of an HF tensor name (q/k/v -> qkv_proj, gate/up -> gate_up_proj)."""
    name = re.sub(r"\.(q|k|v)_proj\.weight$", ".qkv_proj", name)
    return re.sub(r"\.(gate|up)_proj\.weight$", ".gate_up_proj", name)


class AllocTracker(TorchDispatchMode):
    """Measures the bytes of tensor storages created while active (in the thread that enters it) and still
    alive, after every op and at every :meth:`sample`; ``peak`` is the maximum seen. Storages that existed
    before (the model's parameters) are not counted; views and in-place ops create no storage."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def alive_bytes(self) -> int:
        return sum(n for ref, n in self.live.values() if not ref.expired())

    def sample(self) -> None:
        self.peak = max(self.peak, self.alive_bytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat_in = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in flat_in if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0 or key in inputs:
                continue
            old = self.live.get(key)
            if old is None or old[0].expired():
                self.live[key] = (StorageWeakRef(st), st.nbytes())
        self.sample()
        return out


class FakeModelRunner:
    def __init__(self, worker: FakeWorker, model_dir: Path):
        self.worker = worker
        self.model_config = SimpleNamespace(model=str(model_dir), dtype=torch.float32,
                                            hf_config=SimpleNamespace(tie_word_embeddings=False))

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        self.worker.calls.append("model_runner.reload_weights")
        self.worker.layerwise_load(weights_iterator)


class FakeWorker(WeightSyncWorkerExtension):
    """A vLLM worker as far as the extension can tell: ``rank``, ``device``, ``model_runner`` and the worker-level
    ``reload_weights``. ``params`` are its weights (HF names), updated in place by the layerwise load."""

    def __init__(self, items, model_dir: Path, rank: int = 0):
        self.rank = rank
        self.device = torch.device("cpu")
        self.params = {n: torch.zeros_like(t) for n, t in items}
        self.parts = {}
        for n in self.params:
            self.parts.setdefault(_module_of(n), set()).add(n)
        self.model_runner = FakeModelRunner(self, model_dir)
        self.calls: list[str] = []
        self.tracker: AllocTracker | None = None
        self.loaded: list[str] = []  # names loaded into params by the last reload, in order
        self.load_error: BaseException | None = None

    def reload_weights(self, *args, **kwargs):  # vLLM: Worker.reload_weights sets the config context first
        self.calls.append("worker.reload_weights")
        self.model_runner.reload_weights(*args, **kwargs)

    def layerwise_load(self, weights):
        pending: dict[str, dict[str, torch.Tensor]] = {}
        self.loaded, self.load_error = [], None
        try:
            for name, t in weights:
                mod = _module_of(name)
                pending.setdefault(mod, {})[name] = t  # vLLM keeps the reference until the module is complete
                if self.tracker is not None:
                    self.tracker.sample()
                if set(pending[mod]) == self.parts[mod]:
                    for n, x in pending.pop(mod).items():
                        self.params[n].copy_(x)
                        self.loaded.append(n)
                del t
        except BaseException as e:
            self.load_error = e
            raise

    def weight_sync_receive(self, *args, **kwargs):
        self.tracker = AllocTracker()
        with self.tracker:
            return super().weight_sync_receive(*args, **kwargs)


class FakeEngine:
    """A weight-sync peer (``num_workers``, ``rpc_async``, ``reset_prefix_cache``) whose workers run the real
    extension methods, each in its own thread (they are ranks of one group and must run concurrently)."""

    def __init__(self, workers):
        self.workers = list(workers)
        self.num_workers = len(self.workers)
        self._pool = cf.ThreadPoolExecutor(max_workers=4 * len(self.workers))
        self.rpcs: list[str] = []
        self.resets = 0
        self.lock = threading.Lock()

    def rpc_async(self, method, *args, timeout=None):  # noqa: ARG002
        with self.lock:
            self.rpcs.append(method)

        def call_all():
            futs = [self._pool.submit(getattr(w, method), *args) for w in self.workers]
            return [f.result() for f in futs]

        return self._pool.submit(call_all)

    def reset_prefix_cache(self):
        self.resets += 1

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
