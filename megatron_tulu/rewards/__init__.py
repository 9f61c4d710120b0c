"""Verifiable rewards for RLVR: GSM8K, MATH (flex) and IFEval verifiers, registry, batch scoring.

Public API::

    from megatron_tulu.rewards import verify, reward, verify_batch, VERIFIERS
    verify("gsm8k", "... so the answer is $1,234.", "1234")            -> True
    reward("math", r"... \\boxed{\\frac{1}{2}}", "0.5", alpha=10.0)     -> 10.0
    verdicts, metrics = verify_batch(records, workers=2, timeout_s=3.0)  # metrics["timeouts"], ...

CLI: ``python -m megatron_tulu.rewards.score PATH|-`` (see :mod:`megatron_tulu.rewards.score`).
"""

from megatron_tulu.rewards.batch import verify_batch
from megatron_tulu.rewards.registry import DEFAULT_TIMEOUT_S, VERIFIERS, reward, verify

__all__ = ["DEFAULT_TIMEOUT_S", "VERIFIERS", "reward", "verify", "verify_batch"]
