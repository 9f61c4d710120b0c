"""Llama 3.1 model presets with the published shapes (and a tiny one for CPU tests and the demo)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class LlamaPreset:
    """Shape of a Llama-3.1-style decoder. Field names follow megatron-core's TransformerConfig."""

    name: str
    """Preset name, e.g. ``llama3.1-8b``."""
    num_layers: int
    """Transformer blocks."""
    hidden_size: int
    """Model width d."""
    ffn_hidden_size: int
    """SwiGLU inner width (each of gate and up)."""
    num_attention_heads: int
    """Query heads."""
    num_query_groups: int
    """Key/value heads (GQA groups); equal to num_attention_heads for plain MHA."""
    vocab_size: int
    """Tokenizer vocabulary (unpadded). Llama 3: 128,256 including specials."""
    max_position_embeddings: int = 131072
    """Longest sequence the RoPE tables are built for."""
    rope_theta: float = 500000.0
    """RoPE base frequency."""
    rope_scaling: bool = True
    """Llama 3.1 frequency scaling (factor 8, low 1, high 4, original context 8192)."""
    rope_scaling_factor: float = 8.0
    """Llama 3.1 rope scaling factor."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share input embedding and output layer (Llama 3.1: untied)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def param_count(self) -> int:
        """Exact parameter count (equals transformers' LlamaForCausalLM for the same config)."""
        d, f, v, L = self.hidden_size, self.ffn_hidden_size, self.vocab_size, self.num_layers
        kv = self.num_query_groups * self.head_dim
        attn = d * d + 2 * d * kv + d * d  # q, k, v, o
        mlp = 3 * d * f
        norms = 2 * d
        embed = v * d * (1 if self.tie_embeddings else 2)
        return L * (attn + mlp + norms) + embed + d  # + final norm

    def to_dict(self) -> dict:
        out = asdict(self)
        out["head_dim"] = self.head_dim
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaPreset":
        """Inverse of :meth:`to_dict` (derived entries such as ``head_dim`` are ignored)."""
        from dataclasses import fields

        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def with_(self, **kw) -> "LlamaPreset":
        return replace(self, **kw)

    SHAPE_FIELDS = ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads", "num_query_groups",
                    "vocab_size")
    """The fields that decide tensor shapes (rope and norm settings do not)."""

    def shape_diff(self, other: "LlamaPreset") -> dict:
        """``{field: (self's, other's)}`` for the shape fields (:attr:`SHAPE_FIELDS`) where the two differ."""
        return {k: (getattr(self, k), getattr(other, k)) for k in self.SHAPE_FIELDS
                if getattr(self, k) != getattr(other, k)}


PRESETS: dict[str, LlamaPreset] = {
    # A few million parameters: fits CI and trains in minutes on 2 CPU cores. Vocab is set from the
    # embedded tokenizer at run time (``with_(vocab_size=...)``); 512 is the synthetic BPE default.
    "tiny": LlamaPreset(
        name="tiny", num_layers=4, hidden_size=128, ffn_hidden_size=352, num_attention_heads=4,
        num_query_groups=2, vocab_size=512, max_position_embeddings=1024, rope_theta=500000.0,
    ),
    "llama3.1-8b": LlamaPreset(
        name="llama3.1-8b", num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
        num_query_groups=8, vocab_size=128256,
    ),
    "llama3.1-70b": LlamaPreset(
        name="llama3.1-70b", num_layers=80, hidden_size=8192, ffn_hidden_size=28672, num_attention_heads=64,
        num_query_groups=8, vocab_size=128256,
    ),
    "llama3.1-405b": LlamaPreset(
        name="llama3.1-405b", num_layers=126, hidden_size=16384, ffn_hidden_size=53248, num_attention_heads=128,
        num_query_groups=8, vocab_size=128256,
    ),
}


def get_preset(name: str) -> LlamaPreset:
    """Return the preset called ``name``; unknown names raise with the list of known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None
