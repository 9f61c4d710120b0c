"""An engine front-end in a child process of ``$MT_VLLM_PYTHON`` (``rollout.engine_process``): how the project's image,
whose trainers cannot import vLLM, runs ``local`` and ``colocated`` vLLM engines (issue 24's colocated placement
could not start there before). The protocol is tested on the torch engine (quick to start); the colocated vLLM
group through child processes is in ``test_colocated_vllm_rlvr.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_tulu.rollout import factory
from megatron_tulu.rollout.base import EngineRPCTimeout, SamplingConfig
from megatron_tulu.rollout.engine_process import EngineProcess, EngineProcessDied, engine_python
from megatron_tulu.rollout.torch_engine import TorchEngine
from megatron_tulu.testing import python_wrapper
from tiny_llama import hf_greedy, load_reference, make_tiny_llama, perturbed_state, prompts_for_test

pytestmark = pytest.mark.timeout(300)


def test_colocated_rlvr_engine_python_is_another_interpreter_named_by_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MT_VLLM_PYTHON", raising=False)
    assert engine_python() is None
    monkeypatch.setenv("MT_VLLM_PYTHON", sys.executable)  # inside a Ray engine actor or an engine's child process
    assert engine_python() is None
    other = python_wrapper(tmp_path / "vllm-python")
    monkeypatch.setenv("MT_VLLM_PYTHON", other)
    assert engine_python() == other
    monkeypatch.setattr(factory, "vllm_available", lambda: False)  # the image's trainer
    assert factory.resolve_engine_kind("auto") == "vllm"  # its engines can run vLLM, so auto takes it
    for placement in ("local", "colocated"):
        factory.require_engine_here("vllm", placement)  # no error: the front-end runs under $MT_VLLM_PYTHON
    monkeypatch.setenv("MT_VLLM_PYTHON", "/opt/vllm/bin/python")  # the image's path on a host without it
    with pytest.raises(ValueError, match=r"MT_VLLM_PYTHON=/opt/vllm/bin/python is not an executable file"):
        factory.make_engine("vllm", tmp_path, placement="local")  # before anything starts
    monkeypatch.delenv("MT_VLLM_PYTHON")
    with pytest.raises(ValueError, match="cannot import vllm"):
        factory.require_engine_here("vllm", "colocated")


def gone(pid: int) -> bool:
    """No such process, or a zombie (killed, not yet reaped by whoever inherited it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.2)
    return gone(pid)


def test_colocated_rlvr_engine_process_answers_as_the_engine_here(tmp_path):
    """Generations, a weight update, the engine's own errors (same class); then the child killed while a process it
    started still holds its end of the stream (as vLLM's forked engine core would): every later call fails at once
    naming the exit code, shutdown returns, and the orphan is stopped with the child's process group."""
    model_dir = make_tiny_llama(tmp_path / "tiny")
    ref = load_reference(model_dir)
    prompts, sampled = prompts_for_test(4), SamplingConfig(temperature=0.8, max_new_tokens=8, n=2, seed=5)
    here = TorchEngine(model_dir)
    orphan = tmp_path / "orphan.pid"
    python = python_wrapper(tmp_path / "vllm-python", f"sleep 300 &\necho $! > {orphan}")
    child = EngineProcess("torch", model_dir, {}, python, timeout_s=120)
    try:
        assert child.pid != os.getpid() and child.proc.poll() is None
        assert child.generate(prompts, sampled) == here.generate(prompts, sampled)
        new = perturbed_state(ref, 0.05, seed=3)  # also loaded into ref
        child.update_weights(iter(new))
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
        assert [g.token_ids[0] for g in child.generate(prompts, greedy)] == hf_greedy(ref, prompts, 8)
        with pytest.raises(ValueError, match=r"prompt_token_ids\[0\] has ids outside .* \(in engine process \d+\)"):
            child.generate([[10**9]], greedy)  # a token id no vocabulary has: the engine's ValueError
        child.sleep(), child.wake()  # no-ops of the torch engine, answered
        os.kill(child.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineProcessDied, match=rf"engine process {child.pid} .*exited with code -9"):
            child.generate(prompts, greedy)
        assert time.monotonic() - t0 < 15  # not the 120 s call timeout
        assert not gone(int(orphan.read_text()))  # it holds the stream open: the child's exit was seen directly
    finally:
        child.shutdown()
        child.shutdown()
    assert wait_gone(int(orphan.read_text()), 10)


def test_colocated_rlvr_engine_process_ends_when_its_trainer_is_killed(tmp_path):
    """A trainer killed outright (no shutdown): the engine's child sees the end of the stream and exits."""
    model_dir = make_tiny_llama(tmp_path / "tiny")
    python = python_wrapper(tmp_path / "vllm-python")
    trainer = subprocess.run(
        [sys.executable, "-c", "import os, signal\n"
         "from megatron_tulu.rollout.engine_process import EngineProcess\n"
         f"e = EngineProcess('torch', {str(model_dir)!r}, {{}}, {python!r}, timeout_s=120)\n"
         "print(e.pid, flush=True)\n"
         "os.kill(os.getpid(), signal.SIGKILL)\n"],
        capture_output=True, text=True, timeout=120)
    assert trainer.returncode == -signal.SIGKILL, trainer.stderr
    child_pid = int(trainer.stdout.split()[0])
    assert wait_gone(child_pid, 30)


def test_colocated_rlvr_engine_process_start_up_failures_are_named_and_bounded(tmp_path):
    model_dir = tmp_path / "missing"
    python = python_wrapper(tmp_path / "vllm-python")
    with pytest.raises(FileNotFoundError, match=r"missing/config.json not found .*\(in engine process \d+\)"):
        EngineProcess("vllm", model_dir, {}, python, timeout_s=60)  # VLLMEngine's own check, in the child
    # a child that never connects: bounded by timeout_s, then stopped
    silent = python_wrapper(tmp_path / "silent" / "vllm-python", "exec sleep 600")
    t0 = time.monotonic()
    with pytest.raises(EngineRPCTimeout, match=r"rollout engine start-up \(process \d+\): no answer within 2s"):
        EngineProcess("vllm", model_dir, {}, silent, timeout_s=2)
    assert time.monotonic() - t0 < 20
    with pytest.raises(EngineProcessDied, match=r"cannot start the engine process with /nonexistent/python"):
        EngineProcess("vllm", model_dir, {}, "/nonexistent/python", timeout_s=10)
