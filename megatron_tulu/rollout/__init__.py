"""Rollout engines (the one seam to vLLM) and trainer -> engine weight sync.

- :mod:`.base`: ``SamplingConfig``, ``Generation``, ``RolloutEngine`` (the interface the RLVR driver uses)
- :mod:`.factory`: ``make_engine(kind, model_dir, ...)``, the one factory every caller starts engines with
- :mod:`.colocated`: ``ColocatedEngineGroup`` (engines on the trainer ranks' own GPUs; sleep/wake, IPC weight sync)
- :mod:`.ray_engines`: ``RayEngineGroup`` (engines as Ray actors in a placement group)
- :mod:`.engine_process`: ``EngineProcess`` (an engine's front-end in a child process of ``$MT_VLLM_PYTHON``, the
  image's vLLM environment, for the placements that would put it in the caller's process)
- :mod:`.torch_engine`: ``TorchEngine`` (transformers + KV cache; no vLLM needed)
- :mod:`.vllm_engine`: ``VLLMEngine`` (imports vLLM lazily, inside the class)
- :mod:`.vllm_worker_ext`: the vLLM worker extension that receives broadcast weights
- :mod:`.weight_sync`: ``WeightSyncGroup`` (stateless group, bucketed broadcast, timeouts), probe check

Importing this package never imports vLLM.
"""

from megatron_tulu.rollout.base import Generation, RolloutEngine, SamplingConfig
from megatron_tulu.rollout.factory import make_engine

__all__ = ["Generation", "RolloutEngine", "SamplingConfig", "make_engine"]
