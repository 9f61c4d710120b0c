"""``parallel.env_from_slurm``: torch.distributed env vars from a fake SLURM environment."""

from __future__ import annotations

import os
import stat

import pytest

from megatron_tulu.parallel import ParallelDims, _expand_nodelist, env_from_slurm

FAKE = {
    "SLURM_PROCID": "5", "SLURM_NTASKS": "12", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x3)",
    "SLURM_JOB_NODELIST": "node[03-05],gpu7", "SLURM_JOB_ID": "123456",
}


@pytest.fixture
def no_scontrol(tmp_path, monkeypatch):
    """A PATH without scontrol (the real one may be installed here): the fallback parser must be used."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_env_from_slurm_without_scontrol(no_scontrol):
    env = env_from_slurm(dict(FAKE))
    assert env == {
        "RANK": "5", "WORLD_SIZE": "12", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "node03", "MASTER_PORT": str(20000 + 123456 % 20000),
    }


def test_env_from_slurm_keeps_what_is_already_set_and_honours_port(no_scontrol):
    env = env_from_slurm({**FAKE, "MASTER_ADDR": "10.0.0.1", "RANK": "5"}, port=29555)
    assert "MASTER_ADDR" not in env and "RANK" not in env
    assert env["MASTER_PORT"] == "29555" and env["WORLD_SIZE"] == "12"


def test_env_from_slurm_is_empty_outside_slurm():
    assert env_from_slurm({"PATH": os.environ.get("PATH", "")}) == {}


def test_env_from_slurm_uses_scontrol_when_present(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 3\necho headnode-a\necho headnode-b\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert env_from_slurm(dict(FAKE))["MASTER_ADDR"] == "headnode-a"


def test_env_from_slurm_falls_back_when_scontrol_fails(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert env_from_slurm(dict(FAKE))["MASTER_ADDR"] == "node03"


@pytest.mark.parametrize("nodelist,hosts", [
    ("node[03-05],gpu7", ["node03", "node04", "node05", "gpu7"]),
    ("gpu7", ["gpu7"]),
    ("a[1,3-4]b,c[09-10]", ["a1b", "a3b", "a4b", "c09", "c10"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert _expand_nodelist(nodelist) == hosts


def test_parallel_dims_validate_names_the_field():
    with pytest.raises(ValueError, match="parallel.tp"):
        ParallelDims(tp=0, world=2).validate()
    with pytest.raises(ValueError, match="not divisible by tp\\*pp\\*cp"):
        ParallelDims(tp=2, pp=2, world=6).validate()
    assert ParallelDims(tp=2, pp=2, world=8).dp == 2
