"""Rollout -> tensors -> rewards -> advantages: one rollout batch becomes an ``Experience``.

The rows the model reads are padded ``[B, S]`` (prompt + response), or with ``train.max_tokens_per_microbatch`` packed
THD rows (:func:`pack_rows`: several prompt + response documents per row); everything the losses read is on flat
response tokens (``losses.flat``): ``[N]`` per real response token with ``seq_idx [N]``, so both layouts and new
objectives share the losses. ``make_experience`` is pure: tensors in, ``Experience`` and metrics out (the loop runs
the forward passes that give it the old/reference logprobs and values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_tulu.data.packing import document_row
from megatron_tulu.data.sampler import IGNORE_INDEX
from megatron_tulu.losses.flat import flatten
from megatron_tulu.losses.masked import AllReduce

TOKEN_FIELDS = ("old_logp", "ref_logp", "rollout_logp", "advantages", "returns", "old_values", "is_weights",
                "agg_weights")


def response_rows(prompts: list[list[int]], responses: list[list[int]], pad_id: int, seq: int | None = None):
    """Concatenate prompt+response rows. Returns input_ids [B,S], targets [B,S] (next token, IGNORE elsewhere)
    and mask [B,S] (1 where the target is a response token)."""
    lens = [len(p) + len(r) for p, r in zip(prompts, responses)]
    s = seq or max(lens)
    s = -(-s // 8) * 8
    b = len(prompts)
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    targets = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        row = list(p) + list(r)
        ids[i, : len(row)] = torch.tensor(row)
        if r:
            targets[i, len(p) - 1: len(row) - 1] = torch.tensor(r)
    return ids, targets, (targets != IGNORE_INDEX).float()


def pack_rows(prompts: list[list[int]], responses: list[list[int]], bins: list[list[int]], pad_id: int,
              multiple: int = 8, length: int | None = None, dense_mask: bool = False) -> list[dict]:
    """One packed row per bin of sequence indices (``data.token_budget.plan_microbatches``): the bin's prompt +
    response sequences back to back, each a document of its own (the THD layout SFT packing uses).

    Args:
        prompts, responses: token ids of every sequence of the rollout batch.
        bins: per row, the indices of its sequences, in row order.
        pad_id: the tail padding's token.
        multiple: each row's length is rounded up to a multiple of this (8; x TP under sequence parallelism, x 2·cp
            under context parallelism).
        length: every row this long (pipeline schedules need one shape per call); None: each row its own length.
        dense_mask: context parallelism: an ``attn_mask`` instead of ``cu_seqlens`` (``data.packing.document_row``).
    Returns:
        per bin a dict: ``input_ids`` / ``position_ids`` / ``targets`` ``[1, L]`` long and ``mask [1, L]`` float, as
        ``response_rows`` per document, with positions restarting at 0 at every document (RoPE sees each alone) and
        no target across a document boundary; ``cu_seqlens`` ``[[0, ..., L]]`` (a tail pad is a segment of its own);
        ``seqs`` (the bin), ``num_seqs``, ``useful`` (real tokens) and ``computed`` (``L``).
    """
    rows = []
    for b in bins:
        row = document_row([list(prompts[i]) + list(responses[i]) for i in b], pad_id, multiple, length, dense_mask)
        targets = torch.full_like(row["input_ids"], IGNORE_INDEX)
        for i, at in zip(b, row.pop("starts")):
            p, r = len(prompts[i]), len(responses[i])
            if r:  # the same slice response_rows sets, shifted to the document's start
                targets[0, at + p - 1: at + p + r - 1] = torch.tensor(list(responses[i]), dtype=torch.long)
        rows.append({**row, "targets": targets, "mask": (targets != IGNORE_INDEX).float(), "seqs": list(b),
                     "num_seqs": len(b)})
    return rows


def rollout_logp_grid(prompts: list[list[int]], logps: list[list[float]], shape: tuple[int, int]) -> Tensor:
    """The engine's per-token logprobs at the positions of ``response_rows``' targets."""
    grid = torch.zeros(shape)
    for i, (p, lp) in enumerate(zip(prompts, logps)):
        if lp:
            grid[i, len(p) - 1: len(p) - 1 + len(lp)] = torch.tensor(lp)
    return grid


@dataclass
class Experience:
    """This DP rank's share of one rollout batch, ready for the policy and value steps.

    ``input_ids``/``targets``/``mask`` are the ``[B, S]`` rows; the other tensors are ``[N]``, one entry per response
    token (the set entries of ``mask``, row-major), and exist on the last pipeline stage only (None elsewhere)."""

    input_ids: Tensor
    """[B, S] prompt + response tokens."""
    targets: Tensor
    """[B, S] next-token targets, ``IGNORE_INDEX`` outside responses."""
    mask: Tensor
    """[B, S] 1 where the target is a response token."""
    seq_idx: Tensor
    """[N] row (response) of each response token."""
    old_logp: Tensor | None = None
    """[N] the trainer's logprobs before this batch's first update (temperature-scaled)."""
    ref_logp: Tensor | None = None
    """[N] the reference policy's logprobs."""
    rollout_logp: Tensor | None = None
    """[N] the engine's sampling logprobs."""
    advantages: Tensor | None = None
    """[N] advantages (the estimator's, whitened where the algorithm does)."""
    returns: Tensor | None = None
    """[N] value targets (value-model algorithms)."""
    old_values: Tensor | None = None
    """[N] the value model's predictions at rollout time (value-model algorithms)."""
    is_weights: Tensor | None = None
    """[N] importance weights against the engine's sampling (``rlvr.is_correction``)."""
    agg_weights: Tensor | None = None
    """[N] loss-aggregation weights (``losses.ppo.agg_weights`` for ``rlvr.loss_agg``), normalised over each
    optimizer-step batch across all DP ranks: the policy loss of a micro-batch is Σ w·loss_t, and the sum over
    micro-batches and ranks is the aggregate of the whole batch (the trainer's denominator is 1)."""

    @classmethod
    def rows(cls, input_ids: Tensor, targets: Tensor, mask: Tensor) -> "Experience":
        """Rows alone (what every pipeline stage feeds the model)."""
        return cls(input_ids, targets, mask, flatten(mask, mask)[1])

    @property
    def num_seqs(self) -> int:
        return int(self.input_ids.shape[0])

    def microbatches(self, start: int, stop: int, size: int) -> list[dict]:
        """Rows ``[start, stop)`` in micro-batches of ``size`` rows: each a dict of the row slices and the matching
        contiguous slices of the token tensors (``seq_idx`` relative to the micro-batch's first row)."""
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.mask.bool().sum(1).cumsum(0)]).tolist()
        out = []
        for i in range(start, stop, size):
            j = min(i + size, stop)
            mb = {"input_ids": self.input_ids[i:j], "targets": self.targets[i:j], "mask": self.mask[i:j],
                  "seq_idx": self.seq_idx[offsets[i]:offsets[j]] - i}
            for name in TOKEN_FIELDS:
                if (t := getattr(self, name)) is not None:
                    mb[name] = t[offsets[i]:offsets[j]]
            out.append(mb)
        return out

    def token_offsets(self) -> list[int]:
        """``[B + 1]``: where each row's response tokens start in the flat ``[N]`` tensors (row-major)."""
        return torch.cat([torch.zeros(1, dtype=torch.long), self.mask.bool().sum(1).cumsum(0)]).tolist()

    def packed_microbatches(self, rows: list[dict]) -> list[dict]:
        """Packed rows (:func:`pack_rows` over THIS experience's sequences, which hold the whole rollout batch) as
        micro-batches: each row with the token tensors of its sequences, gathered in row order, ``seq_idx`` the
        document within the row, and ``flat_index [n]`` the tokens' places in this experience's ``[N]`` tensors
        (where forward results are scattered back)."""
        offsets, counts = self.token_offsets(), self.mask.bool().sum(1)
        out = []
        for row in rows:
            seqs = row["seqs"]
            idx = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in seqs]) if seqs else \
                torch.zeros(0, dtype=torch.long)
            if idx.numel() != int(row["mask"].sum()):
                raise ValueError(f"packed row of sequences {seqs}: {int(row['mask'].sum())} response tokens, the "
                                 f"experience has {idx.numel()}")
            mb = dict(row, flat_index=idx, seq_idx=torch.repeat_interleave(torch.arange(len(seqs)), counts[seqs]))
            for name in TOKEN_FIELDS:
                if (t := getattr(self, name)) is not None:
                    mb[name] = t[idx]
            out.append(mb)
        return out


def minibatch_totals(mask: Tensor, dp: int, minibatches: list[tuple[int, int]]) -> Tensor:
    """``[M, 2]`` float64 (response tokens, responses) of each optimizer-step batch over ALL DP ranks.

    ``mask [B, S]`` is the whole rollout batch, split evenly over ``dp`` ranks (rank r: rows ``r·B/dp ...``);
    minibatch k is rows ``[a_k, b_k)`` of every rank's share."""
    counts = mask.bool().sum(1).double().view(dp, -1)
    return torch.tensor([[float(counts[:, a:b].sum()), float(dp * (b - a))] for a, b in minibatches],
                        dtype=torch.float64)


def response_scores(o, scores: Tensor, eos: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """The final per-response rewards a group advantage estimator sees, and the overlong part of them.

    Args:
        o: the ``RLVROptions`` (``non_eos_penalty``, ``max_new_tokens``, ``overlong_buffer``,
            ``overlong_penalty_factor``).
        scores: [S] α·verifier score; eos: [S] bool, it ended with EOS; lengths: [S] response tokens.
    Returns:
        (final [S], overlong [S]): ``penalise_non_eos(scores) + overlong`` and the overlong penalty alone
        (``algorithms.overlong_penalty``; zeros when ``rlvr.overlong_buffer_len`` is 0). Dynamic sampling filters
        on ``final``, so a group it keeps is exactly one with a non-zero advantage.
    """
    from megatron_tulu.algorithms import overlong_penalty, penalise_non_eos

    overlong = overlong_penalty(lengths, o.max_new_tokens, o.overlong_buffer, o.overlong_penalty_factor)
    return penalise_non_eos(scores, eos, o.non_eos_penalty) + overlong, overlong


def make_experience(rows: Experience, o, scores: Tensor, eos: Tensor, old_logp: Tensor, ref_logp: Tensor,
                    rollout_logp: Tensor, old_values: Tensor | None = None,
                    dp_sum: AllReduce | None = None, minibatches: list[tuple[int, int]] | None = None,
                    totals: Tensor | None = None) -> tuple[Experience, dict[str, float]]:
    """Rewards, advantages, importance weights and aggregation weights of this rank's rows, by the registered
    parts ``o`` names (``rlvr.advantage_estimator``, ``rlvr.loss_agg``, ``rlvr.is_correction``).

    Args:
        rows: this rank's rows (``Experience.rows``); the result carries them.
        o: the ``RLVROptions``.
        scores: [B] α·verifier score of each row's response; eos: [B] bool, it ended with EOS.
        old_logp, ref_logp, rollout_logp: [B, S] trainer / reference / engine logprobs at the target positions.
        old_values: [B, S] value-model predictions (value-model algorithms).
        dp_sum: sums a tensor over the DP ranks (advantage whitening over the whole batch).
        minibatches: row ranges ``[(a, b), ...]`` of this rank's rows (or lists of row indices), one per optimizer
            step; the loss aggregation is normalised within each (default: all rows, one step).
        totals: ``[M, 2]`` (tokens, responses) of each minibatch over all DP ranks (``minibatch_totals``);
            default: this rank's own counts (one DP rank).
    Returns:
        (experience, metrics): ``reward/*`` (PPO's shaped reward; ``reward/overlong_penalty_mean`` and
        ``reward/overlong_frac`` under ``rlvr.overlong_buffer_len``), ``mismatch/*`` (engine vs trainer, with the IS
        correction's ``mismatch/is_weight_mean``, ``mismatch/is_clipped_frac``, ``mismatch/is_masked_frac``).
    """
    from megatron_tulu.algorithms import ADVANTAGE_ESTIMATORS, IS_CORRECTIONS, AdvantageInputs, shape_rewards, whiten
    from megatron_tulu.losses.kl import logprob_mismatch
    from megatron_tulu.losses.ppo import agg_weights

    preset, m, seq_idx = o.preset, rows.mask.bool(), rows.seq_idx
    flat = lambda grid: None if grid is None else grid[m]  # noqa: E731 - [B, S] -> [N]
    exp = Experience(rows.input_ids, rows.targets, rows.mask, seq_idx, old_logp=flat(old_logp), ref_logp=flat(ref_logp),
                     rollout_logp=flat(rollout_logp), old_values=flat(old_values))
    metrics: dict[str, float] = {}
    final, overlong = response_scores(o, scores, eos, m.sum(1))
    if o.overlong_buffer:
        metrics.update({"reward/overlong_penalty_mean": float(overlong.mean()),
                        "reward/overlong_frac": float((overlong < 0).float().mean())})
    token_rewards = None
    if preset.kl_in == "reward":
        token_rewards, shaped = shape_rewards(scores, exp.old_logp, exp.ref_logp, seq_idx, kl_coef=o.kl_coef,
                                              kl_kind=o.kl_estimator, eos_found=eos, non_eos_penalty=o.non_eos_penalty,
                                              length_penalty=overlong if o.overlong_buffer else None)
        metrics.update({f"reward/{k}": float(v) for k, v in shaped.items()})
    inputs = AdvantageInputs(seq_idx=seq_idx, num_seqs=rows.num_seqs, scores=final,
                             token_rewards=token_rewards, values=exp.old_values, group_size=o.samples_per_prompt,
                             gamma=o.gamma, lam=o.lam)
    exp.advantages, exp.returns = ADVANTAGE_ESTIMATORS[o.part("advantage_estimator")](inputs)
    if preset.whitens and o.whiten_advantages:
        exp.advantages = whiten(exp.advantages, all_reduce=dp_sum)
    exp.agg_weights = _agg_weights(rows, o.part("loss_agg"), o.max_new_tokens, minibatches, totals, agg_weights)
    metrics.update({f"mismatch/{k}": float(v) for k, v in logprob_mismatch(exp.rollout_logp, exp.old_logp).items()})
    if o.is_correction != "none":
        exp.is_weights, is_metrics = IS_CORRECTIONS[o.is_correction](exp.old_logp, exp.rollout_logp, seq_idx,
                                                                     rows.num_seqs, low=o.is_low, high=o.is_high)
        metrics.update({f"mismatch/{k}": float(v) for k, v in is_metrics.items()})
    return exp, metrics


def _agg_weights(rows: Experience, loss_agg: str, max_tokens: int, minibatches, totals, agg_weights) -> Tensor:
    """[N] aggregation weights, normalised within each minibatch by its (DP-wide) totals. A minibatch is a row range
    ``(a, b)`` or a list of row indices (the packed layout holds the whole batch: its minibatches are row sets)."""
    minibatches = [range(*m) if isinstance(m, tuple) else list(m) for m in minibatches or [(0, rows.num_seqs)]]
    counts = rows.mask.bool().sum(1)
    if totals is None:
        totals = torch.tensor([[float(counts[list(m)].sum()), float(len(m))] for m in minibatches], dtype=torch.float64)
    offsets = rows.token_offsets()
    w = torch.zeros(rows.seq_idx.numel(), dtype=torch.float32)
    for m, (tokens, seqs) in zip(minibatches, totals.tolist()):
        if not len(m):
            continue
        idx = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in m])
        local = torch.repeat_interleave(torch.arange(len(m)), counts[list(m)])  # the row within the minibatch
        w[idx] = agg_weights(local, loss_agg, len(m), total_tokens=tokens, total_seqs=seqs, max_tokens=max_tokens)
    return w
