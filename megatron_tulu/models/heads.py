"""Output heads other than the LM head."""

from __future__ import annotations

import torch

from megatron_tulu import platform


class ScalarHead(torch.nn.Module):
    """One scalar per position, replacing the LM output layer: the PPO value model's head (and a reward model's
    score head: the same object). Replicated across TP (its input is not vocab-sharded); under sequence parallelism
    it runs on the gathered sequence (``models.logprobs.full_sequence``). Starts at zero unless a checkpoint's
    ``score.weight`` is copied in."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = torch.nn.Parameter(torch.zeros(1, config.hidden_size, dtype=config.params_dtype,
                                                     device=platform.device()))

    def forward(self, hidden, weight=None, runtime_gather_output=None):  # megatron's output_layer signature
        from megatron_tulu.models.logprobs import full_sequence

        return torch.nn.functional.linear(full_sequence(hidden, self.config), self.weight), None
