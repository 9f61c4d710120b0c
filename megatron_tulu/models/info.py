"""``python -m megatron_tulu.models.info PRESET``: JSON with parameter count (built on the meta device) and shapes."""

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
    out["params"] = meta_param_count(preset)
    out["params_formula"] = preset.param_count()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
