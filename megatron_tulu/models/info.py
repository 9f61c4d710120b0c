"""``python -m megatron_tulu.models.info PRESET``: JSON with parameter counts (built on the meta device) and shapes.

``params`` counts the megatron-core ``GPTModel`` this project trains (TP=PP=1, built on the meta device, so a
405B count takes seconds and no memory); ``params_hf`` counts transformers' ``LlamaForCausalLM`` of the same
config, also on meta; ``params_formula`` is :meth:`LlamaPreset.param_count`. All three must agree.
The megatron count needs a (one-process, gloo) megatron runtime, so it is done in this CLI's own process.
"""

from __future__ import annotations

import json
import sys


def meta_param_count(preset) -> int:
    """Count parameters of the HF-equivalent Llama built on the meta device (no memory is allocated)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_tulu.checkpoint.hf_io import hf_config_from_preset

    cfg = LlamaConfig(**{k: v for k, v in hf_config_from_preset(preset).items() if k not in ("architectures", "torch_dtype")})
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    return sum(p.numel() for p in model.parameters())


def megatron_meta_param_count(preset) -> int:
    """Count parameters of this project's megatron-core ``GPTModel`` (TP=PP=1) built on the meta device.

    Initialises a one-process model-parallel runtime (and, without a GPU, the CPU shim) in this process.
    """
    import torch

    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.parallel import ParallelDims, init_distributed

    init_distributed(ParallelDims(world=1))
    with torch.device("meta"):
        model = build_model(preset, 1, 1, ModelOptions(impl="local", dtype="fp32"))
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    from megatron_tulu.models.presets import get_preset

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m megatron_tulu.models.info PRESET", file=sys.stderr)
        return 2
    try:
        preset = get_preset(argv[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = preset.to_dict()
    out["params"] = megatron_meta_param_count(preset)
    out["params_hf"] = meta_param_count(preset)
    out["params_formula"] = preset.param_count()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
