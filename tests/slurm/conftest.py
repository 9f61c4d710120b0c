"""Fixture for the SLURM tests: a running one-node SLURM (scripts/ci_slurm.sh start when root)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.slurm.slurm_helpers import ROOT, slurm_ready


@pytest.fixture(scope="session")
def slurm() -> None:
    """Skip (with the reason) only where SLURM cannot be started here; in CI (CI=true) fail instead."""
    if slurm_ready():
        return
    reason = None
    if os.geteuid() != 0:
        reason = "SLURM is not running and starting it needs root (scripts/ci_slurm.sh start)"
    else:
        r = subprocess.run(["bash", str(ROOT / "scripts/ci_slurm.sh"), "start"], capture_output=True, text=True,
                           timeout=1200)
        if r.returncode != 0 or not slurm_ready():
            reason = f"scripts/ci_slurm.sh start failed: {r.stderr[-2000:]}"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
