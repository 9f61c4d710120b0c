"""Plain-process receivers for the weight-sync primitives (module-level so spawned processes can import them).

They run the same receiver code the vLLM worker extension runs, minus vLLM: used to test the trainer
side's timeouts (a peer that never joins / dies mid-sync) cheaply. The vLLM end-to-end tests are separate.
"""

import os

import torch

from megatron_tulu.rollout.weight_sync import BucketReceiver, TensorMeta, init_stateless_group


def receiver_main(port, world, rank, wire, bucket_bytes, timeout_s, die_after_buckets, q):
    q.put("started")  # imports are done: the parent can start its clock now
    try:
        group = init_stateless_group("127.0.0.1", port, rank, world, "gloo", timeout_s)
        metas = [TensorMeta.from_wire(x) for x in wire]
        out = {}
        for k, (name, t) in enumerate(BucketReceiver(group, metas, bucket_bytes, torch.device("cpu"), timeout_s).receive()):
            out[name] = t.clone()
            # simulate a crash: exit hard (no cleanup) once the given number of buckets has arrived
            if die_after_buckets is not None and k + 1 >= die_after_buckets:
                os._exit(3)
        q.put(("ok", {k: v.sum().item() for k, v in out.items()}, {k: v.dtype for k, v in out.items()}))
    except Exception as e:  # report to the parent instead of a silent exit
        q.put(("error", f"{type(e).__name__}: {e}", None))
