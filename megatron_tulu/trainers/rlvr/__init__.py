"""RLVR (Tülu 3): PPO with a value model, or GRPO, on verifiable rewards, with a rollout engine in the loop.

- :mod:`.config`: ``RLVRConfig`` / ``RLVROptions`` and the algorithm presets (``ALGORITHMS``: ppo, grpo, dapo,
  dr_grpo, gspo, cispo, rloo = registered advantage estimator, policy loss, loss aggregation, clip range, where the
  KL goes)
- :mod:`.experience`: rollout -> rows -> rewards -> advantages, as one ``Experience`` on flat response tokens
- :mod:`.loop`: ``RLVRDriver``: generation, the PPO/GRPO step (``RLVRDriver.step``), weight sync, inside the shared
  ``Trainer.run_steps``
- :mod:`.dynamic_sampling`: DAPO's group filter + refill rounds (``rlvr.dynamic_sampling``), called by the loop
- :mod:`.tasks`: the policy and value losses as trainer tasks; :mod:`.value`: the value model's shape and trainer
"""

from megatron_tulu.trainers.rlvr.config import ALGORITHMS, RLVRConfig, RLVROptions

__all__ = ["ALGORITHMS", "RLVRConfig", "RLVROptions"]
