"""Run as a script (by test_weight_sync_streaming.py): the peak extra memory of a real vLLM worker while it
receives and loads a weight sync, measured inside the worker.

vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that its worker, and the worker extension's
``weight_sync_receive``, run in this process, where :class:`ws_fakes.AllocTracker` records every storage the
receive path creates (the receiver's buckets and vLLM's own layerwise-reload allocations alike) and how long
it stays alive. A separate process because in-process vLLM may swallow stdout. Prints one JSON line to stderr.

usage: ws_real_vllm_peak.py MODEL_DIR BUCKET_BYTES
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(model_dir: str, bucket: int) -> None:
    import torch
    from transformers import LlamaForCausalLM
    from ws_fakes import AllocTracker

    from megatron_tulu.rollout import vllm_worker_ext as ext
    from megatron_tulu.rollout.vllm_engine import VLLMEngine
    from megatron_tulu.rollout.weight_sync import plan_buckets

    peaks = []
    receive = ext.WeightSyncWorkerExtension.weight_sync_receive

    def tracked(self, *args, **kwargs):
        tracker = AllocTracker()
        with tracker:
            out = receive(self, *args, **kwargs)
        peaks.append(tracker.peak)
        return out

    ext.WeightSyncWorkerExtension.weight_sync_receive = tracked
    ref = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    items = [(n, p.detach().clone()) for n, p in ref.named_parameters()]
    engine = VLLMEngine(model_dir, dtype="float32", kv_cache_memory_bytes=64 * 2**20, sync_bucket_bytes=bucket)
    try:
        for _ in range(2):  # the first sync also sends the metadata
            engine.update_weights(items)
        buckets = len(plan_buckets(engine._own_sync._metas, bucket))
    finally:
        engine.shutdown()
    print(json.dumps({"peaks": peaks, "model_bytes": sum(t.nbytes for _, t in items), "buckets": buckets,
                      "max_tensor": max(t.nbytes for _, t in items)}), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
