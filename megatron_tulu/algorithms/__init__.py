"""RL algorithm pieces as pure functions (tensors in, tensors out; no globals, no process groups).

Shapes: flat response tokens (``megatron_tulu.losses.flat``): ``[N]`` per token, ``seq_idx [N]``, S responses.

ADVANTAGE_ESTIMATORS  (advantages.py), one signature: ``estimator(AdvantageInputs) -> (adv [N], returns [N] | None)``
  "gae"   GAE over per-token rewards and values (PPO)           -> (adv, returns)
  "grpo"  group-normalised scores (population std, as grpo_fast), broadcast over each response -> (adv, None)
  "dr_grpo"  group-mean-centred scores (no std)                 -> (adv, None)
  "rloo"  score minus the mean of the other K-1 of its group    -> (adv, None)
  plus    whiten(x, mask=None, shift_mean=True, all_reduce=None) for global (DP-wide) advantage whitening

Reward shaping (reward_shaping.py)
  penalise_non_eos(scores [S], eos_found [S], penalty) -> [S]    shared by PPO and GRPO
  shape_rewards(verifier_scores [S], logp [N], ref_logp [N], seq_idx [N], kl_coef, kl_kind, eos_found [S],
                non_eos_penalty=-10, length_penalty [S]) -> (token_rewards [N], metrics)   Tülu 3 PPO: score at the
                last token, -β·KL
  overlong_penalty(lengths [S], max_len, buffer_len, factor) -> [S]   DAPO's soft overlong punishment

Group filter (group_filter.py)
  groups_with_signal(rewards [S], group_size K) -> keep [S/K] bool   DAPO dynamic sampling: not all K rewards equal

IS_CORRECTIONS (is_correction.py): "tis", "masked" (IcePop), "sequence"; engine/trainer mismatch weights [N]

Losses live in ``megatron_tulu.losses``: ``ppo.POLICY_LOSSES`` ("ppo"/"clipped", "grpo", "gspo", "cispo"), ``ppo.LOSS_AGGS``, ``ppo.value_loss``,
``kl.KL_ESTIMATORS`` ("k1", "k2", "k3"), ``kl.logprob_mismatch`` (rollout vs trainer logprobs).

PPO step (Tülu 3):  shape_rewards -> "gae" -> whiten(advantages) -> ppo_policy_loss + value_loss
GRPO step:          penalise_non_eos -> "grpo" -> grpo_policy_loss (KL to the reference in the loss)
"""

from megatron_tulu.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    gae,
    grpo_advantages,
    register_advantage,
    rloo_advantages,
    whiten,
)
from megatron_tulu.algorithms.group_filter import groups_with_signal
from megatron_tulu.algorithms.is_correction import IS_CORRECTIONS
from megatron_tulu.algorithms.reward_shaping import (
    overlong_penalty,
    penalise_non_eos,
    shape_rewards,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IS_CORRECTIONS",
    "AdvantageInputs",
    "gae",
    "groups_with_signal",
    "grpo_advantages",
    "overlong_penalty",
    "penalise_non_eos",
    "register_advantage",
    "rloo_advantages",
    "shape_rewards",
    "whiten",
]
