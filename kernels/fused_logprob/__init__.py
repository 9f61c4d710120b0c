"""Fused linear + log-softmax + gather (+ entropy), vocab-parallel; Triton kernel beside its torch reference.

``fused_linear_logprob`` (Triton) and ``linear_logprob_reference`` (torch) share one signature, so a stage's
``use_fused_kernels`` flag can swap one for the other.
"""

from kernels.fused_logprob.reference import linear_logprob_reference
from kernels.fused_logprob.triton_impl import fused_linear_logprob

__all__ = ["fused_linear_logprob", "linear_logprob_reference"]
