"""vLLM's CPU backend needs one core range per TP rank in ``VLLM_CPU_OMP_THREADS_BIND``. The engine computes it for
each engine's TP size unless the user set it; a value the engine set for an earlier engine (in this process, or in a
parent whose environment a worker process inherited) must not pass for the user's: a TP=1 engine's "0-1" then made
a later TP=2 engine fail to start ("CPU id list ['0-1'] doesn't match local world size 2")."""

import os
import subprocess
import sys

import pytest

from megatron_tulu.rollout import vllm_engine


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for var in ("VLLM_CPU_OMP_THREADS_BIND", "MT_VLLM_AUTO_THREADS_BIND"):
        monkeypatch.delenv(var, raising=False)


def test_binding_follows_each_engines_tp_size(two_cores):
    vllm_engine._cpu_settings(1, None)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    vllm_engine._cpu_settings(2, None)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


def test_inherited_automatic_binding_is_recomputed():
    """A worker process whose parent started a TP=1 engine: the module is imported with both variables set."""
    code = ("import os; os.sched_getaffinity = lambda pid: {0, 1}; from megatron_tulu.rollout import vllm_engine; "
            "vllm_engine._cpu_settings(2, None); print(os.environ['VLLM_CPU_OMP_THREADS_BIND'])")
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0-1", MT_VLLM_AUTO_THREADS_BIND="0-1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0|1"


def test_a_users_binding_wins(two_cores, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1|0")
    assert vllm_engine._cpu_settings(2, 123) == 123
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "1|0"
