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
With ``first_layers``/``last_layers`` (megatron's ``num_layers_in_first/last_pipeline_stage``) the first/last
rank hold that many layers and the ranks between share the rest evenly: :meth:`PipelineSplit.fit` picks them
for a model that must run on another model's pipeline ranks (a PPO value model of 32 layers beside a 405B
policy at PP=14: 4 + 12 x 2 + 4).
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
    first_layers: int | None = None
    """Decoder layers on the first pipeline rank (all its virtual stages together); None: an even share."""
    last_layers: int | None = None
    """Decoder layers on the last pipeline rank; None: an even share."""

    @classmethod
    def of(cls, split: "PipelineSplit | int") -> "PipelineSplit":
        """A plain ``pp`` (int) or a split as it is."""
        return split if isinstance(split, PipelineSplit) else cls(pp=int(split))

    @classmethod
    def from_model_config(cls, config) -> "PipelineSplit":
        """The split a megatron ``TransformerConfig`` was built with."""
        return cls(pp=config.pipeline_model_parallel_size, vpp=config.virtual_pipeline_model_parallel_size or 1,
                   account_embedding_loss=bool(config.account_for_embedding_in_pipeline_split),
                   first_layers=config.num_layers_in_first_pipeline_stage,
                   last_layers=config.num_layers_in_last_pipeline_stage)

    @property
    def num_chunks(self) -> int:
        return self.pp * self.vpp

    @property
    def is_even(self) -> bool:
        """No first/last-stage sizes: every chunk's share follows from ``pp``, ``vpp`` and the slot accounting."""
        return self.first_layers is None and self.last_layers is None

    @property
    def is_plain(self) -> bool:
        """One contiguous, even block of layers per rank (what the converter's per-rank files hold)."""
        return self.vpp == 1 and not self.account_embedding_loss and self.is_even

    def check_sizes(self) -> None:
        """Raise ValueError naming the fields when pp/vpp/the embedding-loss slots cannot go together."""
        if self.pp < 1 or self.vpp < 1:
            raise ValueError(f"parallel.pp={self.pp} and parallel.vpp={self.vpp} must be >= 1")
        if self.vpp > 1 and self.pp == 1:
            raise ValueError(f"parallel.vpp={self.vpp} needs parallel.pp > 1 (virtual stages interleave pipeline ranks)")
        if self.account_embedding_loss and self.pp == 1:
            raise ValueError("parallel.pp_account_embedding_loss needs parallel.pp > 1")
        if not self.is_even:
            if self.pp == 1 or self.account_embedding_loss:  # megatron refuses both
                raise ValueError(f"first_layers/last_layers ({self.first_layers}/{self.last_layers}) need pp > 1 and "
                                 "no parallel.pp_account_embedding_loss")
            for n in (self.first_layers, self.last_layers):
                if n is not None and (n <= 0 or n % self.vpp):
                    raise ValueError(f"first_layers/last_layers ({self.first_layers}/{self.last_layers}) must be "
                                     f"positive multiples of vpp={self.vpp}")

    def _stage_counts(self, num_layers: int) -> list[int] | None:
        """Layers on each pipeline rank under first/last sizes (None when the rest does not share out evenly)."""
        ends = [n for n in (self.first_layers, self.last_layers) if n is not None]
        middle, rest = self.pp - len(ends), num_layers - sum(ends)
        if rest < 0 or (middle == 0) != (rest == 0) or (middle and rest % (middle * self.vpp)):
            return None
        counts = [rest // middle if middle else 0] * self.pp
        if self.first_layers is not None:
            counts[0] = self.first_layers
        if self.last_layers is not None:
            counts[-1] = self.last_layers
        return counts

    def divides(self, num_layers: int) -> bool:
        """Whether ``num_layers`` (plus the embedding and loss slots when counted) split evenly over the chunks
        (over the middle ranks' chunks, under first/last sizes)."""
        if not self.is_even:
            return self._stage_counts(num_layers) is not None
        return (num_layers + (2 if self.account_embedding_loss else 0)) % self.num_chunks == 0

    def rank_layer_counts(self, num_layers: int) -> list[int]:
        """Decoder layers on each pipeline rank (all its virtual stages together)."""
        return [sum(len(self.layers(num_layers, r, v)) for v in range(self.vpp)) for r in range(self.pp)]

    def fit(self, num_layers: int) -> "PipelineSplit":
        """This split for a model of ``num_layers`` that must use its pipeline ranks and virtual stages (a PPO
        value model on the policy's ranks): itself when the layers divide; else the even split without slot
        accounting; else megatron's uneven split with the first/last rank sizes that make the busiest rank hold
        the fewest layers (ties: fewer layers on the ranks with the embedding and head, then on the first rank,
        which keeps the most micro-batches in flight under 1F1B, then fewer sizes set). ValueError when none."""
        for cand in (replace(self, first_layers=None, last_layers=None),
                     replace(self, first_layers=None, last_layers=None, account_embedding_loss=False)):
            if cand.divides(num_layers):
                return cand
        best, key = None, None
        if self.pp > 1:
            sizes = [None, *range(self.vpp, num_layers + 1, self.vpp)]
            for f in sizes:
                for last in sizes:
                    cand = PipelineSplit(pp=self.pp, vpp=self.vpp, first_layers=f, last_layers=last)
                    counts = None if cand.is_even else cand._stage_counts(num_layers)
                    if counts is None or min(counts) == 0:
                        continue
                    k = (max(counts), counts[0] + counts[-1], counts[0], (f is not None) + (last is not None))
                    if key is None or k < key:
                        best, key = cand, k
        if best is None:
            raise ValueError(f"{num_layers} layers cannot be split over pp={self.pp} x vpp={self.vpp} model chunks, "
                             "not even with uneven first/last pipeline stages")
        return best

    def validate(self, num_layers: int, preset_name: str = "") -> None:
        """Raise ValueError naming the fields when the layers do not split evenly over the chunks."""
        self.check_sizes()
        if not self.is_even and not self.divides(num_layers):
            raise ValueError(f"model.num_layers={num_layers}{f' (preset {preset_name!r})' if preset_name else ''}: "
                             f"after {self.first_layers}/{self.last_layers} layers on the first/last rank the rest "
                             f"does not split evenly over the other ranks (pp={self.pp} x vpp={self.vpp})")
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
        if not self.is_even:  # per chunk: its rank's count / vpp; chunks in model order
            counts = self._stage_counts(num_layers)
            if counts is None:
                raise ValueError(f"{self} does not split {num_layers} layers")
            per_chunk = [counts[i % self.pp] // self.vpp for i in range(self.num_chunks)]
            start = sum(per_chunk[:c])
            return range(start, start + per_chunk[c])
        extra = 2 if self.account_embedding_loss else 0
        per = (num_layers + extra) // self.num_chunks
        emb = 1 if self.account_embedding_loss else 0
        start = max(0, c * per - emb)
        stop = min(num_layers, (c + 1) * per - emb)
        return range(start, stop)
