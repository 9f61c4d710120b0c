"""DAPO's dynamic sampling (Yu et al. 2025, §3.2) as the loop runs it: filter, refill, bound.

A rollout batch ``ro`` is the plain dict ``RLVRDriver._generate`` returns: per-response lists (``RESPONSE_FIELDS``,
the K responses of a prompt consecutive) and per-batch numbers. :func:`collect_groups` keeps the prompt groups whose
final rewards differ (``algorithms.groups_with_signal``) and asks ``generate_more(round)`` for further batches until
``target_groups`` are kept or ``max_extra_rounds`` extra rounds ran. It runs identically on every rank (its inputs
are the broadcast batches), so every rank draws the same prompts from its sampler and the sampler's saved position
stays exact: a resumed run sees the same prompts.

Bound behaviour (one decision, documented here and in ``RLVROptions.dynamic_sampling_max_batches``):
- enough groups kept: the first ``target_groups`` of them in generation order (the surplus is discarded, as DAPO's
  verl recipe does: ``batch[:traj_bsz]``);
- bound reached short of that: the batch is filled up with dropped groups in generation order (zero advantage:
  they add nothing to the policy gradient, only dilute a token-mean loss, as without dynamic sampling), so DP,
  mini- and micro-batch splits keep their sizes; ``dynamic_sampling/filled_groups`` counts them;
- no group kept at all: ``RuntimeError`` (training would be a no-op on every step from here; DAPO's recipe raises as
  soon as its bound is reached).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

RESPONSE_FIELDS = ("prompts", "responses", "rollout_logp", "eos", "correct")
"""Per-response lists of a rollout batch (K consecutive entries per prompt)."""


def num_groups(ro: dict, group_size: int) -> int:
    return len(ro["correct"]) // group_size


def select_groups(ro: dict, groups: list[int], group_size: int) -> dict:
    """``ro`` restricted to the prompt groups ``groups`` (indices, in the order given); batch numbers copied."""
    rows = [g * group_size + s for g in groups for s in range(group_size)]
    out = dict(ro)
    for f in RESPONSE_FIELDS:
        out[f] = [ro[f][i] for i in rows]
    return out


def merge_rollouts(a: dict, b: dict) -> dict:
    """Two rollout batches of the same engine weights as one: responses concatenated, counts and times summed."""
    out = dict(a)
    for f in RESPONSE_FIELDS:
        out[f] = list(a[f]) + list(b[f])
    out["timeouts"] = a["timeouts"] + b["timeouts"]
    out["gen_s"] = a["gen_s"] + b["gen_s"]
    by = {d: list(v) for d, v in a["by_dataset"].items()}
    for d, (c, n) in b["by_dataset"].items():
        by[d] = [by.get(d, [0, 0])[0] + c, by.get(d, [0, 0])[1] + n]
    out["by_dataset"] = by
    return out


def collect_groups(first: dict, generate_more: Callable[[int], dict], rewards_of: Callable[[dict], Tensor],
                   group_size: int, target_groups: int, max_extra_rounds: int) -> tuple[dict, dict[str, float]]:
    """Filter ``first`` and refill until ``target_groups`` groups with a signal (see the module doc for the bound).

    Args:
        first: the step's generated batch (``target_groups`` prompts x ``group_size`` responses).
        generate_more: ``round -> batch``: draws the next prompts and generates (round = 1, 2, ...).
        rewards_of: ``batch -> [S]`` final rewards (``experience.response_scores``).
        group_size: K (``rlvr.samples_per_prompt``, >= 2).
        target_groups: prompts per training batch (``train.global_batch_size``).
        max_extra_rounds: ``rlvr.dynamic_sampling_max_batches``.
    Returns:
        (batch of exactly ``target_groups`` groups, metrics): ``dynamic_sampling/groups_dropped`` (groups with equal
        rewards, all rounds), ``dropped_frac`` (of the groups generated), ``extra_rounds``, ``prompts_consumed``
        (prompts drawn from the stream this step), ``filled_groups`` (dropped groups trained on because the bound was
        reached), and ``reward/gen_accuracy`` (over every response generated this step, kept or not).
    """
    from megatron_tulu.algorithms import groups_with_signal

    pool = first  # every response generated this step
    keep = groups_with_signal(rewards_of(first), group_size).tolist()
    rounds = 0
    while sum(keep) < target_groups and rounds < max_extra_rounds:
        rounds += 1
        more = generate_more(rounds)
        keep += groups_with_signal(rewards_of(more), group_size).tolist()
        pool = merge_rollouts(pool, more)
    generated, kept = len(keep), [g for g, k in enumerate(keep) if k]
    if not kept:
        raise RuntimeError(
            f"dynamic sampling: all {generated} prompt groups generated in {1 + rounds} rounds (1 + "
            f"rlvr.dynamic_sampling_max_batches={max_extra_rounds}) got equal rewards on their {group_size} samples: "
            "no learning signal (the prompts are all solved or all failed by this policy). Raise "
            "rlvr.dynamic_sampling_max_batches, change the data, or set rlvr.dynamic_sampling=false to train on them")
    dropped = [g for g, k in enumerate(keep) if not k]
    filled = max(0, target_groups - len(kept))
    batch = select_groups(pool, kept[:target_groups] + dropped[:filled], group_size)
    metrics = {
        "dynamic_sampling/groups_dropped": float(len(dropped)),
        "dynamic_sampling/dropped_frac": len(dropped) / generated,
        "dynamic_sampling/extra_rounds": float(rounds),
        "dynamic_sampling/prompts_consumed": float(generated),
        "dynamic_sampling/filled_groups": float(filled),
        "reward/gen_accuracy": sum(map(float, pool["correct"])) / len(pool["correct"]),
    }
    # the batch's per-dataset accuracies stay those of every response generated (an unbiased sample of the policy)
    batch["by_dataset"] = pool["by_dataset"]
    return batch, metrics
