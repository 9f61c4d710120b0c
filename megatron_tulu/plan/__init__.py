"""Parallelism / memory / step-time planner for Llama 3.1 layouts (``python -m megatron_tulu.plan --help``).

Public API: :class:`PlanRequest`, :func:`enumerate_layouts`, :func:`evaluate`, :func:`plan_rlvr_layout`
(node roles for the SLURM dry run), the formulas in :mod:`.memory` and :mod:`.throughput`, GPU specs in
:mod:`.hardware`. The SLURM job planner (a typed config's plan, checked against the script's allocation) is
:mod:`.jobs`, and :mod:`.ray_cluster` turns a plan into an RLVR job's srun/Ray arguments.
"""

from megatron_tulu.plan.layouts import Layout, PlanRequest, enumerate_layouts, evaluate, plan_rlvr_layout

__all__ = ["Layout", "PlanRequest", "enumerate_layouts", "evaluate", "plan_rlvr_layout"]
