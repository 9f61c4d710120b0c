"""Bad checkpoints are refused with the path named, and ``resume=auto`` discovery falls back to the previous good
one. Works on copies of the reference run's real dist_checkpointing checkpoints (steps 3 and 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_tulu.checkpoint.distributed import CheckpointError, find_resume, validate

pytestmark = pytest.mark.slow


@pytest.fixture
def ckpts(one_rank_runs, tmp_path) -> Path:
    root = tmp_path / "checkpoints"
    shutil.copytree(one_rank_runs["ref"] / "checkpoints", root)
    return root


def test_reference_checkpoints_are_complete(ckpts):
    assert (ckpts / "latest").read_text().strip() == "step_00000006"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000003", "step_00000006"]  # keep_last=2
    for step in (3, 6):
        state = validate(ckpts / f"step_{step:08d}")
        assert state["step"] == step and state["shard_files"], state
        assert {"sampler", "total_steps", "world_size"} <= set(state)
    assert find_resume(ckpts) == ckpts / "step_00000006"
    assert not list(ckpts.glob(".*.tmp")), "temporary save dirs must be renamed away"


def _drop_complete(d: Path):
    (d / "COMPLETE").unlink()
    return "no COMPLETE marker"


def _drop_shard(d: Path):
    shard = sorted(d.glob("*.distcp"))[0]
    shard.unlink()
    return "missing shard files"


def _wrong_step(d: Path):
    f = d / "trainer_state.json"
    f.write_text(json.dumps(dict(json.loads(f.read_text()), step=5)))
    return "metadata says 5"


def _corrupt_state(d: Path):
    (d / "trainer_state.json").write_text('{"step": 6, "sampl')
    return "trainer_state.json: corrupt"


def _drop_metadata(d: Path):
    (d / ".metadata").unlink()
    return ".metadata missing"


@pytest.mark.parametrize("damage", [_drop_complete, _drop_shard, _wrong_step, _corrupt_state, _drop_metadata],
                         ids=lambda f: f.__name__.lstrip("_"))
def test_damaged_checkpoint_refused_and_auto_falls_back(ckpts, damage, caplog):
    bad = ckpts / "step_00000006"
    reason = damage(bad)
    with pytest.raises(CheckpointError) as e:
        validate(bad)
    assert str(bad) in str(e.value) and reason in str(e.value), str(e.value)
    # ``latest`` still names the damaged one: discovery refuses it (logging why) and takes step 3
    with caplog.at_level("WARNING"):
        assert find_resume(ckpts) == ckpts / "step_00000003"
    assert str(bad) in caplog.text and reason in caplog.text


def test_no_good_checkpoint_means_fresh_start(ckpts):
    for d in ckpts.glob("step_*"):
        (d / "COMPLETE").unlink()
    assert find_resume(ckpts) is None
    assert find_resume(ckpts.parent / "does_not_exist") is None
