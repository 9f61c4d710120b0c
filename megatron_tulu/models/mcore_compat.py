"""Every workaround for a specific megatron-core version, in one place, behind a version check.

The project pins megatron-core (``pyproject.toml``); :data:`SUPPORTED_MCORE` is the range these workarounds were
written and tested against. ``check_version`` runs when the process groups are set up
(``parallel.init_distributed``), so a container with another megatron-core fails at start-up naming both versions,
instead of deep inside a checkpoint load. When the pin moves, re-check each workaround below against the new
release (each docstring says what it fixes) and drop the ones upstream has fixed.
"""

from __future__ import annotations

import torch

SUPPORTED_MCORE = ">=0.16.0,<0.17.0"
"""megatron-core releases these workarounds are known to be right for."""


def installed_version() -> str:
    import megatron.core

    return megatron.core.__version__


def check_version(version: str | None = None) -> str:
    """Raise ``RuntimeError`` naming the installed and the supported megatron-core when they disagree; returns the
    version. ``version``: the one to check (default: the installed one)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    version = version or installed_version()
    if Version(version) not in SpecifierSet(SUPPORTED_MCORE):
        raise RuntimeError(f"megatron-core {version} is installed, but megatron_tulu/models/mcore_compat.py supports "
                           f"megatron-core{SUPPORTED_MCORE} (pyproject.toml pins it): install the pinned version, or "
                           "re-check the workarounds in mcore_compat.py against this one and widen SUPPORTED_MCORE")
    return version


def sub_optimizers(optimizer) -> list:
    """The DistributedOptimizers inside megatron's ChainedOptimizer (or the optimizer itself)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def prepare_optimizer_for_load(optimizer) -> None:
    """Before loading a DistributedOptimizer's state with plain torch Adam (no TE/apex FusedAdam), megatron-core
    0.16: its loader neither provides Adam's per-parameter ``step`` nor expects it (KeyError 'step') and copies into
    leaf views outside ``no_grad``. Installs a corrected ``_set_main_param_and_optimizer_states`` (once, on the
    class: megatron calls it from inside ``load_state_dict``) and gives the states their dummy values, as megatron's
    own loader expects. See shared/notes/megatron-core-on-cpu.md."""
    _install_adam_state_setter()
    for sub in sub_optimizers(optimizer):
        sub._init_optimizer_states_with_dummy_values()


def after_optimizer_load(optimizer) -> None:
    """After loading, megatron-core 0.16 leaves ONE ``step`` tensor shared by every parameter (so it would advance
    once per parameter per step): give each parameter its own copy."""
    for sub in sub_optimizers(optimizer):
        inner = getattr(sub, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            if "step" in state and torch.is_tensor(state["step"]):
                state["step"] = state["step"].clone()


def _install_adam_state_setter() -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if getattr(DistributedOptimizer, "_mt_patched", False):
        return

    def _set(self, model_param, tensors, _orig=DistributedOptimizer._set_main_param_and_optimizer_states):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return _orig(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        dst = {"param": main_param, **self.optimizer.state[main_param]}
        with torch.no_grad():
            for key, t in dst.items():
                if key in tensors:
                    t.copy_(tensors[key])

    DistributedOptimizer._set_main_param_and_optimizer_states = _set
    DistributedOptimizer._mt_patched = True
