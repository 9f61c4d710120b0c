"""Which decoder layers each pipeline model chunk holds: plain, interleaved (virtual stages) or with the
embedding and the loss counted as layers. Pure arithmetic, no megatron import, so the offline converter, the
HF export order, the weight-sync metadata and the memory planner all agree with what megatron builds (the
rule is megatron-core's ``get_transformer_layer_offset`` / ``get_num_layers_to_build``; a test checks the two
agree on many layouts).

Model chunks are numbered in model order ``c = vp_stage * pp + pp_rank``: with PP=2 and VPP=2 over 8
layers, rank 0 holds chunks 0 and 2 (layers 0-1 and 4-5), rank 1 chunks 1 and 3 (layers 2-3 and 6-7).
With ``account_embedding_loss`` the split is over ``num_layers + 2`` slots, the embedding taking the first
slot of chunk 0 and the loss the last slot of the last chunk: Llama 3.1 405B's 126 layers then split evenly
over PP=8 (16 slots per rank: 15 layers on the first and last rank) or PP=8 x VPP=8 (megatron's 405B recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator


@dataclass(frozen=True)
class PipelineSplit:
    """How the decoder layers are split over pipeline ranks and their virtual stages."""

    pp: int = 1
    """Pipeline-parallel size (``parallel.pp``)."""
    vpp: int = 1
    """Model chunks per pipeline rank (``parallel.vpp``); > 1 runs megatron's interleaved 1F1B schedule."""
    account_embedding_loss: bool = False
    """Count the embedding and the loss as one layer each (``parallel.pp_account_embedding_loss``)."""

    @classmethod
    def of(cls, split: "PipelineSplit | int") -> "PipelineSplit":
        """A plain ``pp`` (int) or a split as it is."""
        return split if isinstance(split, PipelineSplit) else cls(pp=int(split))

    @classmethod
    def from_model_config(cls, config) -> "PipelineSplit":
        """The split a megatron ``TransformerConfig`` was built with."""
        return cls(pp=config.pipeline_model_parallel_size, vpp=config.virtual_pipeline_model_parallel_size or 1,
                   account_embedding_loss=bool(config.account_for_embedding_in_pipeline_split))

    @property
    def num_chunks(self) -> int:
        return self.pp * self.vpp

    @property
    def is_plain(self) -> bool:
        """One contiguous, even block of layers per rank (what the converter's per-rank files hold)."""
        return self.vpp == 1 and not self.account_embedding_loss

    def check_sizes(self) -> None:
        """Raise ValueError naming the fields when pp/vpp/the embedding-loss slots cannot go together."""
        if self.pp < 1 or self.vpp < 1:
            raise ValueError(f"parallel.pp={self.pp} and parallel.vpp={self.vpp} must be >= 1")
        if self.vpp > 1 and self.pp == 1:
            raise ValueError(f"parallel.vpp={self.vpp} needs parallel.pp > 1 (virtual stages interleave pipeline ranks)")
        if self.account_embedding_loss and self.pp == 1:
            raise ValueError("parallel.pp_account_embedding_loss needs parallel.pp > 1")

    def divides(self, num_layers: int) -> bool:
        """Whether ``num_layers`` (plus the embedding and loss slots when counted) split evenly over the chunks."""
        return (num_layers + (2 if self.account_embedding_loss else 0)) % self.num_chunks == 0

    def validate(self, num_layers: int, preset_name: str = "") -> None:
        """Raise ValueError naming the fields when the layers do not split evenly over the chunks."""
        self.check_sizes()
        if not self.divides(num_layers):
            what = f"model.num_layers={num_layers}" + (" + 2 (embedding and loss)" if self.account_embedding_loss else "")
            hint = ""
            if not self.account_embedding_loss and replace(self, account_embedding_loss=True).divides(num_layers):
                hint = "; parallel.pp_account_embedding_loss=true would split it evenly"
            raise ValueError(f"pp={self.pp} x vpp={self.vpp} = {self.num_chunks} model chunks do not divide {what}"
                             f"{f' (preset {preset_name!r})' if preset_name else ''}{hint}")

    def chunks(self) -> Iterator[tuple[int, int]]:
        """``(pp_rank, vp_stage)`` of every model chunk, in model (layer) order."""
        for c in range(self.num_chunks):
            yield c % self.pp, c // self.pp

    def _index(self, pp_rank: int, vp_stage: int) -> int:
        if not (0 <= pp_rank < self.pp and 0 <= vp_stage < self.vpp):
            raise ValueError(f"no model chunk (pp_rank={pp_rank}, vp_stage={vp_stage}) with pp={self.pp} vpp={self.vpp}")
        return vp_stage * self.pp + pp_rank

    def has_embedding(self, pp_rank: int, vp_stage: int = 0) -> bool:
        return self._index(pp_rank, vp_stage) == 0

    def has_head(self, pp_rank: int, vp_stage: int = 0) -> bool:
        """Final norm and output layer (and the loss) live on the last chunk."""
        return self._index(pp_rank, vp_stage) == self.num_chunks - 1

    def layers(self, num_layers: int, pp_rank: int, vp_stage: int = 0) -> range:
        """Global indices of the decoder layers chunk ``(pp_rank, vp_stage)`` holds."""
        c = self._index(pp_rank, vp_stage)
        extra = 2 if self.account_embedding_loss else 0
        per = (num_layers + extra) // self.num_chunks
        emb = 1 if self.account_embedding_loss else 0
        start = max(0, c * per - emb)
        stop = min(num_layers, (c + 1) * per - emb)
        return range(start, stop)
