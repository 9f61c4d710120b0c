"""What a stage plugs into the shared loop: the ``Task`` base with every hook the loop calls, and the tokenizer +
tokenized-dataset helper that the data-driven stages share."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu.trainers.config import DataConfig


class Task:
    """A stage differs from another by its Task: how it builds its data, cuts a global batch into micro-batches,
    runs the model and computes the loss on the last pipeline stage. Subclasses implement the first six methods;
    the others are optional hooks whose defaults do nothing, and the loop calls every one of them."""

    metric_names: list[str] = []
    """Names of the per-micro-batch SUM metrics ``loss_fn`` returns (reduced over micro-batches and DP)."""
    tokenizer_dir: str | None = None
    """Tokenizer an HF export of the model carries (None: none)."""
    packed: bool = False
    """Rows hold several documents (THD boundaries or block-causal masks)."""
    vocab_size: int | None = None
    """The tokenizer's vocabulary (the model's embedding is padded up from it); None: the preset's."""
    head: str | None = None
    """The last stage's head (``models.llama.HEADS``), read by ``model_setup.build_trainable`` and by the HF export;
    None: the LM head (``hidden`` with ``model.use_fused_logprob``). The reward model sets ``scalar``."""

    def setup(self, trainer) -> int:
        """Build/load data; return the number of training examples (rows)."""
        raise NotImplementedError

    def microbatches(self, indices: list[int], trainer) -> list[dict]:
        """This DP rank's examples ``indices`` as micro-batches of tensors (each with ``input_ids`` [b, S])."""
        raise NotImplementedError

    def denominator(self, microbatches: list[dict]) -> float:
        """This rank's contribution to the loss normaliser (summed over DP)."""
        raise NotImplementedError

    def forward(self, model, batch: dict) -> torch.Tensor:
        """Run the model on one micro-batch; returns the output tensor (logits on the last stage)."""
        raise NotImplementedError

    def loss_fn(self, batch: dict, output: torch.Tensor, trainer) -> tuple[torch.Tensor, dict]:
        """On the last stage: (summed loss of the micro-batch, {metric_name: summed value})."""
        raise NotImplementedError

    def finalize(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        """Turn reduced sums into the step's logged metrics (must include ``loss``)."""
        raise NotImplementedError

    # ---- optional hooks -----------------------------------------------------------------------------
    def shard(self, indices: list[int], trainer) -> list[int]:
        """This DP rank's share of the step's global batch ``indices`` (default: equal contiguous slices; the pair
        stages balance token sums under ``train.max_tokens_per_microbatch``). Every rank must get the same count
        when the stage's normaliser assumes it, and ranks of one pipeline the same indices."""
        from megatron_tulu.data.sampler import shard_batch

        return shard_batch(indices, trainer.dp_rank, trainer.dims.dp)

    def customize_model(self, chunk) -> None:
        """Each model chunk once its initial weights are loaded, before DDP and the optimizer copy them (e.g. the
        reward model's score-head init: a change made after ``build_trainable`` would miss the optimizer's fp32
        main weights)."""

    def after_model(self, trainer) -> None:
        """Once the model is built, before resuming (e.g. DPO's reference pre-pass with the initial weights)."""

    def evaluate(self, trainer) -> dict[str, float]:
        """Held-out metrics, before the first step and after the last ({}: none)."""
        return {}

    def state_dict(self) -> dict:
        """Task state saved with each checkpoint ({}: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    def hf_extra_config(self) -> dict:
        """Extra entries for an HF export's config.json."""
        return {}


class DataStageMixin:
    """Tokenizer + tokenized dataset shared by the data-driven tasks (rank 0 builds the cache first)."""

    def load_tokenizer(self, data: DataConfig):
        from megatron_tulu.data.tokenizer import load_tokenizer

        if not data.tokenizer:
            raise ValueError("data.tokenizer is empty: give the HF tokenizer directory")
        self.tokenizer = load_tokenizer(data.tokenizer)
        self.tokenizer_dir = data.tokenizer
        self.vocab_size = len(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def build(self, trainer, kind: str, mixture: dict, max_len: int | None):
        from megatron_tulu.data.loaders import build_dataset, mixture_from_dict

        data = self.cfg.data
        if not mixture:
            raise ValueError(f"data.mixture is empty for the {kind} stage")
        cache = Path(data.cache_dir or Path(trainer.run_dir) / "data_cache")
        mix = mixture_from_dict(dict(mixture))
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == 0:
            ds, report = build_dataset(mix, kind, self.tokenizer, max_len, data.template, cache_dir=cache,
                                           add_bos=data.add_bos)
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            ds, report = build_dataset(mix, kind, self.tokenizer, max_len, data.template, cache_dir=cache,
                                           add_bos=data.add_bos)
        self.data_report = report
        return ds
