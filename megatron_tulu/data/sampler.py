"""Deterministic, exactly resumable batch sampling and padding collation for the trainers.

:class:`EpochSampler` yields global batches of example indices; epoch ``e`` uses the permutation drawn from
``numpy.random.default_rng([seed, e])``, so the order depends only on (seed, epoch) and the position is two
integers. ``state_dict()`` after k batches + ``load_state_dict()`` on a fresh sampler continues with batch k+1.
Each data-parallel rank takes its slice of a global batch with :func:`shard_batch`.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

IGNORE_INDEX = -100


class EpochSampler:
    """Global batches of indices in ``[0, num_examples)``, reshuffled every epoch by ``seed``.

    Args:
        num_examples: dataset size.
        global_batch: examples per optimizer step (all ranks, all micro-batches).
        seed: shuffle seed.
        drop_last: drop an epoch's final incomplete batch (the default; keeps every step the same size).
        shuffle: False keeps dataset order (evaluation).
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int = 0, drop_last: bool = True,
                 shuffle: bool = True):
        if global_batch <= 0:
            raise ValueError(f"global_batch must be positive, got {global_batch}")
        if num_examples <= 0 or (drop_last and num_examples < global_batch):
            raise ValueError(f"{num_examples} examples cannot fill one global batch of {global_batch} (drop_last={drop_last})")
        self.num_examples, self.global_batch, self.seed = num_examples, global_batch, seed
        self.drop_last, self.shuffle = drop_last, shuffle
        self.epoch = 0
        self.batch_in_epoch = 0

    def batches_per_epoch(self) -> int:
        n, b = self.num_examples, self.global_batch
        return n // b if self.drop_last else -(-n // b)

    __len__ = batches_per_epoch

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def next_batch(self) -> list[int]:
        """The next global batch, moving into the next epoch when this one is exhausted."""
        if self.batch_in_epoch >= self.batches_per_epoch():
            self.epoch += 1
            self.batch_in_epoch = 0
        order = self._order(self.epoch)
        s = self.batch_in_epoch * self.global_batch
        batch = order[s: s + self.global_batch].tolist()
        self.batch_in_epoch += 1
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        """The remaining batches of the current epoch (then the sampler stands at the next epoch)."""
        while self.batch_in_epoch < self.batches_per_epoch():
            yield self.next_batch()
        self.epoch += 1
        self.batch_in_epoch = 0

    @property
    def consumed_examples(self) -> int:
        return self.epoch * self.num_examples + min(self.batch_in_epoch * self.global_batch, self.num_examples)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.seed,
                "num_examples": self.num_examples, "global_batch": self.global_batch, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; refuses a state from a different dataset size, batch size or seed."""
        for k in ("seed", "num_examples", "global_batch", "drop_last"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"sampler state has {k}={state[k]!r} but this sampler has {getattr(self, k)!r}")
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])


def shard_batch(batch: Sequence[int], dp_rank: int, dp_size: int) -> list[int]:
    """This data-parallel rank's contiguous slice of a global batch (global_batch must divide by dp_size)."""
    if len(batch) % dp_size:
        raise ValueError(f"global batch of {len(batch)} does not split over {dp_size} data-parallel ranks")
    per = len(batch) // dp_size
    return list(batch[dp_rank * per: (dp_rank + 1) * per])


def split_microbatches(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive micro-batches of ``size`` (raises when they do not divide)."""
    if len(items) % size:
        raise ValueError(f"{len(items)} examples do not split into micro-batches of {size}")
    return [items[i: i + size] for i in range(0, len(items), size)]


def shift_targets(labels):
    """Next-token targets ``[B, T]``: position t predicts labels[t+1]; the last position is ignored."""
    import torch

    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


def collate(examples: Sequence[dict], pad_id: int, pad_to_multiple_of: int = 1, max_len: int | None = None) -> dict:
    """Right-pad tokenized examples into tensors.

    Args:
        examples: dicts with ``input_ids`` and optional ``labels`` (default: input_ids, i.e. pretraining) and
            optional ``position_ids`` (packed rows keep theirs).
        pad_id: pad token id.
        pad_to_multiple_of: round T up (e.g. 8 or the TP/CP size for sequence parallelism).
        max_len: truncate longer examples to this length.
    Returns:
        ``input_ids`` [B, T] long, ``labels`` [B, T] long (-100 on pad and prompt), ``attention_mask`` [B, T]
        bool (True on real tokens), ``loss_mask`` [B, T] float (1.0 where labels != -100), ``position_ids``
        [B, T] long. Labels are *not* shifted: position t's label is the token at t; the loss shifts.
    """
    import torch

    if not examples:
        raise ValueError("collate got an empty batch")
    seqs = [list(e["input_ids"])[:max_len] if max_len else list(e["input_ids"]) for e in examples]
    T = max(len(s) for s in seqs)
    T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.bool)
    pos = torch.zeros((B, T), dtype=torch.long)
    for i, (e, s) in enumerate(zip(examples, seqs)):
        n = len(s)
        input_ids[i, :n] = torch.tensor(s, dtype=torch.long)
        lab = e.get("labels", s)
        labels[i, :n] = torch.tensor(list(lab)[:n], dtype=torch.long)
        attn[i, :n] = True
        p = e.get("position_ids")
        pos[i, :n] = torch.tensor(list(p)[:n], dtype=torch.long) if p is not None else torch.arange(n)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attn,
            "loss_mask": (labels != IGNORE_INDEX).float(), "position_ids": pos}


def collate_preference(examples: Sequence[dict], pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Collate preference rows into one padded batch of 2B rows: chosen 0..B-1, then rejected B..2B-1.

    Returns the :func:`collate` keys over the 2B rows (shared T) plus ``num_pairs`` = B.
    """
    rows = [{"input_ids": e["chosen_input_ids"], "labels": e["chosen_labels"]} for e in examples]
    rows += [{"input_ids": e["rejected_input_ids"], "labels": e["rejected_labels"]} for e in examples]
    out = collate(rows, pad_id, pad_to_multiple_of)
    out["num_pairs"] = len(examples)
    return out
