"""Token-budget micro-batches, balanced across data-parallel ranks (``train.max_tokens_per_microbatch``).

Padded micro-batches of a fixed number of sequences compute ``rows x longest`` tokens; with RLVR's length spread
(16 to 512 response tokens at tiny scale, 64 to 2048 at 8B) most of that is padding. Here a batch of sequences is
first split over the DP ranks with equal sequence counts and near-equal token sums, then each rank's share is cut
into micro-batches of at most ``max_tokens`` tokens (first-fit decreasing), each packed into one THD row. The same
idea as verl's dynamic batch size (``rearrange_micro_batches``) and NeMo-RL's sequence packing; the functions are
pure and deterministic (ties broken by index), so every rank computes the same plan and a resumed step the same.

A sequence longer than ``max_tokens`` gets a micro-batch of its own (it is never cut).
"""

from __future__ import annotations


def balance_over_ranks(lengths: list[int], dp: int) -> list[list[int]]:
    """Indices of ``lengths`` split into ``dp`` groups of equal size (``len(lengths) % dp == 0``) whose token sums are
    near-equal: longest first, each to the rank with the fewest tokens among those with room (LPT with a count
    constraint). Each group is returned in ascending index order."""
    n = len(lengths)
    if dp < 1 or n % dp:
        raise ValueError(f"{n} sequences do not split evenly over {dp} data-parallel ranks")
    per = n // dp
    groups: list[list[int]] = [[] for _ in range(dp)]
    tokens = [0] * dp
    for i in sorted(range(n), key=lambda i: (-lengths[i], i)):
        r = min((r for r in range(dp) if len(groups[r]) < per), key=lambda r: (tokens[r], r))
        groups[r].append(i)
        tokens[r] += lengths[i]
    return [sorted(g) for g in groups]


def token_budget_bins(lengths: list[int], indices: list[int], max_tokens: int) -> list[list[int]]:
    """``indices`` (into ``lengths``) cut into micro-batches of at most ``max_tokens`` tokens each, first-fit
    decreasing; a longer sequence is alone in its micro-batch. Bins come out longest first, members by index."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        slot = next((b for b in range(len(bins)) if room[b] >= lengths[i]), None)
        if slot is None:
            bins.append([i])
            room.append(max_tokens - lengths[i])
        else:
            bins[slot].append(i)
            room[slot] -= lengths[i]
    return [sorted(b) for b in bins]


def plan_microbatches(lengths: list[int], dp: int, max_tokens: int) -> list[list[list[int]]]:
    """Per DP rank, its micro-batches (lists of sequence indices): :func:`balance_over_ranks`, then
    :func:`token_budget_bins` on each rank's share."""
    return [token_budget_bins(lengths, g, max_tokens) for g in balance_over_ranks(lengths, dp)]


def useful_fraction(useful_tokens: int, computed_tokens: int) -> float:
    """Useful tokens (real prompt + response tokens) over computed ones (padding included): 1.0 means no padding."""
    return useful_tokens / computed_tokens if computed_tokens else 1.0


def padded_computed_tokens(lengths: list[int], rows_per_microbatch: int) -> int:
    """Tokens a padded layout computes: consecutive groups of ``rows_per_microbatch`` sequences, each padded to its
    longest (what fixed-size micro-batches of padded rows do); for the ``useful / computed`` comparison."""
    return sum(rows_per_microbatch * max(lengths[a:a + rows_per_microbatch]) if lengths[a:a + rows_per_microbatch] else 0
               for a in range(0, len(lengths), rows_per_microbatch))
