"""A vLLM engine whose front-end would run in this process needs vLLM importable here, or an interpreter that has it
named in ``$MT_VLLM_PYTHON`` (the project's image: the front-end then runs in a child process of it,
``rollout.engine_process``). With neither, a local or colocated vLLM engine must fail before any model loads, naming
the interpreter, instead of an ImportError minutes in. (This machine has vLLM: the missing package is simulated by
the one function that looks for it.)"""

from __future__ import annotations

import sys

import pytest

from megatron_tulu.rollout import factory


@pytest.fixture
def no_vllm_here(monkeypatch):
    monkeypatch.setattr(factory, "vllm_available", lambda: False)
    monkeypatch.delenv("MT_VLLM_PYTHON", raising=False)


@pytest.mark.parametrize("placement", ["local", "colocated"])
def test_an_in_process_vllm_engine_without_vllm_fails_naming_the_interpreter(no_vllm_here, placement):
    with pytest.raises(ValueError, match=rf"a {placement} vLLM engine runs in this process, but {sys.executable} "
                                         r"cannot import vllm; .*name a Python that has it in \$MT_VLLM_PYTHON"):
        factory.require_engine_here("vllm", placement)
    with pytest.raises(ValueError, match="cannot import vllm"):  # make_engine checks before building anything
        factory.make_engine("vllm", "/nonexistent", placement=placement)


def test_ray_engines_and_the_torch_engine_need_no_vllm_here(no_vllm_here):
    factory.require_engine_here("vllm", "ray")      # the actors run under $MT_VLLM_PYTHON
    factory.require_engine_here("torch", "local")
    factory.require_engine_here("auto", "local")    # auto takes the torch engine where vLLM is missing


def test_ray_engine_groups_say_whether_they_honour_a_regex():
    """A prefgen judge constrains its reply only where the engine says it can: a group of vLLM actors started with
    structured output can (it used to say no, so the judge was parsed leniently without a word)."""
    from megatron_tulu.rollout.ray_engines import supports_regex
    from megatron_tulu.rollout.vllm_engine import VLLMEngine

    assert supports_regex("vllm", {"structured_outputs": True, "tensor_parallel_size": 8})
    assert not supports_regex("vllm", {"tensor_parallel_size": 8}) and not supports_regex("torch", {})
    assert "structured_outputs" in VLLMEngine.__init__.__code__.co_varnames  # the argument both read


def test_rlvr_and_prefgen_check_before_loading_anything(no_vllm_here, tmp_path, capsys):
    from megatron_tulu.config import load_config
    from megatron_tulu.prefgen.cli import main
    from megatron_tulu.trainers.rlvr import RLVRConfig
    from megatron_tulu.trainers.rlvr.loop import RLVRDriver

    cfg = load_config(RLVRConfig, "rlvr/tiny", [f"run_dir={tmp_path}", "rlvr.engine=vllm", "model.init_hf=/nowhere"])
    with pytest.raises(ValueError, match="cannot import vllm"):
        RLVRDriver(cfg)  # before the policy (whose init_hf does not exist) loads
    assert main(["--config", "prefgen/tiny", f"run_dir={tmp_path / 'pg'}", "engine.kind=vllm"]) == 2
    assert "a local vLLM engine runs in this process" in capsys.readouterr().err
    assert not (tmp_path / "pg").exists()  # nothing started: no run directory, no prompts
