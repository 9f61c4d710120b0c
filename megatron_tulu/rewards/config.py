"""The ``rewards`` section of a stage config: how verifiable rewards are scored (RLVR reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.rewards.registry import DEFAULT_TIMEOUT_S


@dataclass
class RewardsConfig:
    """How responses are scored by the verifiers of ``megatron_tulu.rewards``."""

    ifeval_partial_credit: bool = False
    """IFEval rows score the fraction of their constraints met (reward alpha x fraction) instead of all-or-nothing
    (Tülu 3: all-or-nothing; the score CLI's and eval's ``--ifeval-partial-credit``)."""
    paper_compat: bool = False
    """Reproduce the 2024 reference verifiers' quirks (each verifier's docstring lists them; the score CLI's
    ``--paper-compat``)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Time limit of one verification; a response over it scores 0 and is counted."""

    def validate(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"rewards.timeout_s must be > 0, got {self.timeout_s}")
