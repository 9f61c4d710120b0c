"""``LlamaGPTModel``: megatron-core's ``GPTModel`` with this project's choices made at construction.

- ``head``: ``lm`` (vocab-parallel logits), ``hidden`` (final hidden states ``[b, s, d]`` for the fused Triton
  linear+logprob kernel: the output layer keeps its TP-sharded weight, so checkpoints, export and weight sync are
  unchanged; ``models.logprobs.token_logprobs`` runs the kernel against it) or ``scalar`` (a ``ScalarHead``: one
  value per position, the PPO value model's and a reward model's head).
- Inputs are always FULL rows ``input_ids [b, S]``: packed rows (``packed_seq_params``, several documents per
  row) run as one THD sequence (``models.packed``), and under context parallelism each rank feeds megatron its own
  ``S / cp`` tokens (``models.context_parallel``).

Imported only by ``models.build.build_model`` (this module imports megatron-core at import time).
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel

from megatron_tulu.models import context_parallel as cp_split
from megatron_tulu.models.heads import ScalarHead

HEADS = ("lm", "hidden", "scalar")


def _hidden_head(output_layer) -> None:
    """Make the output layer return its (sequence-gathered) input: the class of this one layer becomes a subclass of
    its own whose ``forward`` skips the matmul (the weight, its name and its TP-sharded checkpoint metadata stay).
    The fused kernel all-reduces the hidden-state gradient over TP itself, so the layer's usual copy-to-TP-region is
    skipped on purpose."""
    from megatron_tulu.models.logprobs import full_sequence

    base = type(output_layer)

    class HiddenOutput(base):
        def forward(self, input_, weight=None, runtime_gather_output=None):  # noqa: ARG002 - the layer's signature
            return full_sequence(input_, self.config), None

    HiddenOutput.__name__ = HiddenOutput.__qualname__ = f"Hidden{base.__name__}"
    output_layer.__class__ = HiddenOutput


class LlamaGPTModel(GPTModel):
    """A Llama 3.1 model chunk (one pipeline stage, or one virtual stage of it).

    Args (besides ``GPTModel``'s):
        head: ``lm``, ``hidden`` or ``scalar`` (see the module docstring); only the chunk with ``post_process``
            has a head.
        true_vocab_size: the tokenizer's vocabulary (the embedding is padded up to a TP multiple; the padded rows
            are masked by ``models.logprobs``).
    """

    def __init__(self, *args, head: str = "lm", true_vocab_size: int | None = None, **kwargs):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        super().__init__(*args, **kwargs)
        self.head = head
        self.true_vocab_size = true_vocab_size
        self.fused_logprob_head = self.post_process and head == "hidden"
        if self.post_process and head == "scalar":
            self.output_layer = ScalarHead(self.config)
        elif self.fused_logprob_head:
            _hidden_head(self.output_layer)

    def forward(self, input_ids, position_ids, attention_mask, *args, packed_seq_params=None, **kwargs):
        """``input_ids``/``position_ids`` ``[b, S]`` full rows; ``attention_mask`` ``[b, 1, S, S]`` or None;
        ``packed_seq_params``: THD boundaries of packed rows (``models.packed.packed_seq_params``). The last stage
        returns this CP rank's tokens ``[b, S / cp, ...]`` (everything, without CP)."""
        if self.config.context_parallel_size > 1:
            input_ids, position_ids, attention_mask = cp_split.local_inputs(input_ids, position_ids, attention_mask,
                                                                            self.config)
        if packed_seq_params is None:
            return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        if attention_mask is not None:
            raise ValueError("packed rows take packed_seq_params or a dense attention mask, not both")
        b, s = input_ids.shape
        flat = lambda x: None if x is None else x.reshape(1, b * s)  # noqa: E731 - megatron's THD path has batch 1
        out = super().forward(flat(input_ids), flat(position_ids), None, *args, packed_seq_params=packed_seq_params,
                              **kwargs)
        if self.post_process and isinstance(out, torch.Tensor):
            out = out.view(b, s, *out.shape[2:])
        return out
