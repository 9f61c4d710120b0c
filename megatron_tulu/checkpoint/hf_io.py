"""Hugging Face Llama directories: config <-> preset, lazy safetensors reading, atomic streamed writing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import torch

from megatron_tulu.models.presets import LlamaPreset

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "chat_template.jinja", "generation_config.json",
)


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds.

    A crash leaves at most a ``.tmp-*`` directory, never a partial ``final``. An existing ``final`` is
    replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a small file so that readers see the old content or the new, never a part: a temporary sibling named
    by this process (concurrent writers never share one), flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def preset_from_hf_config(cfg: dict, name: str = "hf") -> LlamaPreset:
    """Llama preset from an HF ``config.json`` dict; unsupported settings raise naming the field."""
    if cfg.get("model_type", "llama") != "llama":
        raise ValueError(f"config.json model_type={cfg.get('model_type')!r}: only 'llama' is supported")
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if field not in cfg:
            raise ValueError(f"config.json is missing {field!r}")
    heads = cfg["num_attention_heads"]
    if cfg.get("head_dim") not in (None, cfg["hidden_size"] // heads):
        raise ValueError(f"config.json head_dim={cfg['head_dim']} != hidden_size/num_attention_heads: unsupported")
    for field in ("attention_bias", "mlp_bias"):
        if cfg.get(field):
            raise ValueError(f"config.json {field}=true is not supported (Llama 3.1 has no biases)")
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_type = rs.get("rope_type", rs.get("type", "default"))
    scaling = rope_type == "llama3"
    if scaling:
        expect = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        for k, v in expect.items():
            if k in rs and float(rs[k]) != float(v):
                raise ValueError(f"config.json rope_scaling.{k}={rs[k]} unsupported (megatron-core fixes it to {v})")
    elif rope_type not in ("default", None):
        raise ValueError(f"config.json rope_scaling type {rope_type!r} unsupported (default or llama3)")
    theta = cfg.get("rope_theta", rs.get("rope_theta", 10000.0))
    return LlamaPreset(
        name=name,
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads", heads),
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 131072),
        rope_theta=float(theta),
        rope_scaling=scaling,
        rope_scaling_factor=float(rs.get("factor", 8.0)) if scaling else 8.0,
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def hf_config_from_preset(p: LlamaPreset, dtype: str = "bfloat16", eos_token_id=None, bos_token_id=None) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.ffn_hidden_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_query_groups,
        "head_dim": p.head_dim,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": p.max_position_embeddings,
        "rms_norm_eps": p.norm_eps,
        "rope_theta": p.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": p.tie_embeddings,
        "torch_dtype": dtype,
    }
    if p.rope_scaling:
        cfg["rope_scaling"] = {
            "rope_type": "llama3", "factor": p.rope_scaling_factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        }
    if eos_token_id is not None:
        cfg["eos_token_id"] = eos_token_id
    if bos_token_id is not None:
        cfg["bos_token_id"] = bos_token_id
    return cfg


class HFReader:
    """Lazy access to the tensors of an HF checkpoint directory (single or sharded safetensors)."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        cfg_file = self.path / "config.json"
        if not cfg_file.exists():
            raise FileNotFoundError(f"{cfg_file} not found: not a Hugging Face model directory")
        self.config = json.loads(cfg_file.read_text())
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors files in {self.path}")
            self.weight_map = {}
            for f in files:
                with safe_open(f, "pt") as fh:
                    for k in fh.keys():
                        self.weight_map[k] = f.name
        self._open = safe_open
        self._handles: dict[str, object] = {}

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for every tensor, read one at a time (streams: nothing is held)."""
        for name in self.weight_map:
            yield name, self.get(name)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise KeyError(f"tensor {name!r} missing from {self.path} (have {len(self.weight_map)} tensors)")
        fname = self.weight_map[name]
        if fname not in self._handles:
            f = self.path / fname
            if not f.exists():
                raise FileNotFoundError(f"{f} (listed for {name!r} in the index) does not exist")
            self._handles[fname] = self._open(f, "pt")
        return self._handles[fname].get_tensor(name)

    def check_keys(self, expected: Iterable[str], allow_extra: Iterable[str] = ("lm_head.weight",)) -> None:
        expected = set(expected)
        have = set(self.weight_map) - {k for k in self.weight_map if k.endswith("rotary_emb.inv_freq")}
        missing = sorted(expected - have)
        extra = sorted(have - expected - set(allow_extra))
        if missing:
            raise KeyError(f"{self.path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            raise KeyError(f"{self.path}: unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")


def write_hf_dir(
    out: str | Path,
    config: dict,
    tensors: Iterator[tuple[str, torch.Tensor]],
    shard_bytes: int = 5 * 2**30,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Stream ``(name, tensor)`` pairs into sharded safetensors + index, atomically. Returns ``out``.

    At most one shard (``shard_bytes``) is held in memory at a time.
    """
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_dir(out) as tmp:
        shard: dict[str, torch.Tensor] = {}
        size, files, weight_map = 0, [], {}

        def flush():
            nonlocal shard, size
            if shard:
                fname = f"model-{len(files) + 1:05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                files.append(fname)
                for k in shard:
                    weight_map[k] = fname
                shard, size = {}, 0

        total = 0
        for name, t in tensors:
            t = t.detach().to("cpu", dtype or t.dtype).contiguous()
            if size and size + t.numel() * t.element_size() > shard_bytes:
                flush()
            shard[name] = t
            size += t.numel() * t.element_size()
            total += t.numel() * t.element_size()
        flush()
        n = len(files)
        final_map = {}
        for i, fname in enumerate(files):
            new = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (tmp / fname).rename(tmp / new)
            final_map.update({k: new for k, v in weight_map.items() if v == fname})
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": final_map}, indent=2)
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer_dir is not None:
            for f in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / f
                if src.exists():
                    shutil.copy2(src, tmp / f)
    return out
