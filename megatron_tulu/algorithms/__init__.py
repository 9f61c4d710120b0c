"""RL algorithm pieces as pure functions (tensors in, tensors out; no globals, no process groups).

Registry (name -> function):

ADVANTAGE_ESTIMATORS  (advantages.py)
  "gae"   gae(token_rewards [B,T], values [B,T], mask [B,T], gamma=1.0, lam=0.95) -> (adv [B,T], returns [B,T])
  "grpo"  grpo_advantages(scores [B], group_size, eps=1e-6, std_normalize=True) -> adv [B]
  plus    whiten(x, mask, shift_mean=True, all_reduce=None) for global (DP-wide) advantage whitening

Reward shaping (reward_shaping.py)
  shape_rewards(verifier_scores [B], logp, ref_logp, mask, kl_coef, kl_kind, eos_found [B], non_eos_penalty=-10)
      -> (token_rewards [B,T], metrics)   Tülu 3 PPO reward: score at the last token, -β·KL on every token

Losses live in ``megatron_tulu.losses``: ``ppo.POLICY_LOSSES`` ("ppo", "grpo"), ``ppo.value_loss``,
``kl.KL_ESTIMATORS`` ("k1", "k2", "k3"), ``kl.logprob_mismatch`` (rollout vs trainer logprobs).

PPO step (Tülu 3):  shape_rewards -> gae -> whiten(advantages) -> ppo_policy_loss + vf_coef * value_loss
GRPO step:          grpo_advantages(α·verifier scores) -> grpo_policy_loss (KL to the reference in the loss)
"""

from megatron_tulu.algorithms.advantages import ADVANTAGE_ESTIMATORS, gae, grpo_advantages, whiten
from megatron_tulu.algorithms.reward_shaping import last_token_index, shape_rewards

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "gae",
    "grpo_advantages",
    "last_token_index",
    "shape_rewards",
    "whiten",
]
