"""GPU readiness §3: a local vLLM engine (in trainer rank 0's process, on its GPU) must be sized to fit beside the
trainer, sleep while the trainer steps, and a layout that cannot fit is refused, naming the fields, before any
model loads. vLLM has no sleep mode on CPU: these tests observe the calls and their order; the memory it frees
is GPU-only."""

import types

import pytest
import torch


def _cfg(*overrides):
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.rlvr import RLVRConfig

    return load_config(RLVRConfig, "rlvr/8b", list(overrides))


LOCAL_8B_TP8 = ("parallel.tp=8", "rlvr.num_engines=1", "rlvr.engine_placement=local")


def test_the_planner_names_what_does_not_fit_beside_the_trainer():
    from megatron_tulu.plan.colocation import engine_beside_trainer_problems
    from megatron_tulu.plan.hardware import GPUS

    h100 = GPUS["h100-80gb"]
    default = engine_beside_trainer_problems(_cfg(*LOCAL_8B_TP8), h100, world_size=8)  # vLLM's usual 0.9 of the GPU
    assert len(default) == 2 and "rlvr.engine_memory_fraction=0.9" in default[0]
    assert "rlvr.engine_sleep_level" in default[1]
    # half the GPU fits beside the trainer's state while generating, not beside its training peak ...
    half = engine_beside_trainer_problems(_cfg(*LOCAL_8B_TP8, "rlvr.engine_memory_fraction=0.5"), h100, world_size=8)
    assert len(half) == 1 and "while the trainer steps" in half[0] and "rlvr.engine_sleep_level=2" in half[0]
    # ... unless the engine sleeps while the trainer steps
    assert engine_beside_trainer_problems(_cfg(*LOCAL_8B_TP8, "rlvr.engine_memory_fraction=0.5", "rlvr.engine_sleep_level=2"),
                                 h100, world_size=8) == []
    starved = engine_beside_trainer_problems(_cfg(*LOCAL_8B_TP8, "rlvr.engine_memory_fraction=0.1"), h100, world_size=8)
    assert len(starved) == 1 and "no KV cache" in starved[0]


@pytest.fixture
def eight_h100s(monkeypatch):
    """What the driver's check reads on a GPU node: an H100 and a world of 8 trainer ranks."""
    from megatron_tulu import platform

    monkeypatch.setattr(platform, "has_gpu", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(total_memory=85 * 10**9))
    monkeypatch.setenv("WORLD_SIZE", "8")


def test_a_local_engine_that_cannot_fit_is_refused_before_any_model_loads(eight_h100s):
    from megatron_tulu.trainers.rlvr import loop as rlvr_driver

    with pytest.raises(ValueError, match=r"does not fit on trainer rank 0's GPU.*rlvr\.engine_memory_fraction=0\.9"):
        rlvr_driver.check_engine_fits_beside_trainer(_cfg(*LOCAL_8B_TP8))
    rlvr_driver.check_engine_fits_beside_trainer(_cfg(*LOCAL_8B_TP8, "rlvr.engine_memory_fraction=0.5",
                                             "rlvr.engine_sleep_level=2"))


@pytest.mark.parametrize("override,field", [("rlvr.engine_sleep_level=3", "rlvr.engine_sleep_level"),
                                            ("rlvr.engine_memory_fraction=0", "rlvr.engine_memory_fraction"),
                                            ("rlvr.async_steps=1", "rlvr.async_steps")])
def test_bad_engine_memory_options_name_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):  # when the config loads
        _cfg(*LOCAL_8B_TP8, "rlvr.engine_sleep_level=2", override)


class _Recorder:
    """An engine / driver stand-in that logs the calls the RLVR loop makes, in order."""

    def __init__(self, log):
        self.log = log

    def sleep(self):
        self.log.append("engine.sleep")

    def wake(self):
        self.log.append("engine.wake")


@pytest.mark.parametrize("level,expected", [
    (2, ["engine.sleep", "step", "engine.wake", "sync", "probe_check"]),
    (0, ["step", "sync", "probe_check"]),
])
def test_the_engine_sleeps_while_the_trainer_steps_and_wakes_for_the_sync(level, expected):
    from megatron_tulu.trainers.rlvr.loop import RLVRDriver

    log = []
    driver = object.__new__(RLVRDriver)  # the loop's step sequence alone: no model, no engine process
    driver.o = types.SimpleNamespace(engine_sleep_level=level, engine_placement="local")
    driver.engine = _Recorder(log)
    driver.step = lambda ro, lr: log.append("step") or {"loss": 1.0}
    driver.sync_weights = lambda: log.append("sync") or 0.1
    driver.post_sync_check = lambda: log.append("probe_check") or 0.0
    metrics = driver.train_and_sync({"batch": 0}, 1e-6, ahead=[])
    assert log == expected
    assert metrics["time/sync_s"] == 0.1 and metrics["loss"] == 1.0


def test_vllm_engine_sleeps_at_its_level_on_a_gpu_only():
    from megatron_tulu.rollout.vllm_engine import VLLMEngine

    calls = []
    engine = object.__new__(VLLMEngine)
    engine.llm = types.SimpleNamespace(sleep=lambda level: calls.append(("sleep", level)),
                                       wake_up=lambda: calls.append(("wake_up",)))
    engine.sleep_level = 2  # what __init__ keeps on a GPU
    engine.sleep()
    engine.wake()
    assert calls == [("sleep", 2), ("wake_up",)]
    engine.sleep_level = 0  # on CPU (no sleep mode in vLLM's CPU build) or level 0
    engine.sleep()
    engine.wake()
    assert calls == [("sleep", 2), ("wake_up",)]


COLOCATED_GRPO_8B = ("rlvr.engine_placement=colocated", "rlvr.num_engines=1", "cluster.nodes=1", "parallel.tp=4",
                     "parallel.pp=1", "rlvr.engine_tp=4")


def _validate_only(capsys, *overrides):
    from megatron_tulu.cli import stage_main
    from megatron_tulu.trainers.rlvr import RLVRConfig

    code = stage_main("launch.rlvr", RLVRConfig, None, "rlvr/8b_grpo",
                      argv=["--config", "rlvr/8b_grpo", "--validate-only", *overrides])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_colocated_rlvr_engine_memory_is_checked_before_the_job_starts(capsys):
    """Colocated engines share every trainer GPU: --validate-only (and the SLURM dry run's plan) refuses a
    fraction that cannot fit beside the trainer's resident state, naming the field and the largest that fits."""
    code, text = _validate_only(capsys, *COLOCATED_GRPO_8B)  # vLLM's usual 0.9 of each GPU
    assert code == 2 and "every trainer GPU holds" in text and "rlvr.engine_memory_fraction=0.9" in text
    assert "at most 0.6" in text
    code, text = _validate_only(capsys, *COLOCATED_GRPO_8B, "rlvr.engine_memory_fraction=0.4",
                                "rlvr.engine_sleep_level=2")
    assert code == 0 and "valid" in text, text
    code, text = _validate_only(capsys, *COLOCATED_GRPO_8B, "rlvr.engine_memory_fraction=0.4",
                                "rlvr.engine_sleep_level=2", "cluster.nodes=2")  # each node hosts its engines
    assert code == 0 and "valid" in text, text
    code, text = _validate_only(capsys, *COLOCATED_GRPO_8B, "cluster.nodes=2", "rlvr.engine_tp=16")
    assert code == 2 and "rlvr.engine_tp=16 must divide the 8 trainer ranks of a node" in text, text


def test_colocated_grpo_engine_that_cannot_fit_is_refused_before_any_model_loads(eight_h100s):
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.rlvr import RLVRConfig
    from megatron_tulu.trainers.rlvr import loop as rlvr_driver

    with pytest.raises(ValueError, match=r"colocated: the vLLM engine does not fit on every trainer GPU"):
        rlvr_driver.check_engine_fits_beside_trainer(load_config(RLVRConfig, "rlvr/8b_grpo", list(COLOCATED_GRPO_8B)))
    rlvr_driver.check_engine_fits_beside_trainer(load_config(RLVRConfig, "rlvr/8b_grpo", [
        *COLOCATED_GRPO_8B, "rlvr.engine_memory_fraction=0.4", "rlvr.engine_sleep_level=2"]))
