"""``python -m megatron_tulu.checkpoint.verify`` as a user runs it: last line ``max_abs_diff=<x>``, exit 0 within
the tolerance and 1 above it (here: a converted checkpoint checked against a different HF model)."""

import subprocess
import sys
from pathlib import Path

import pytest

import foundation_helpers as fh

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # three CLI processes (convert, verify twice), ~16 s on 2 cores


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_verify_cli_prints_max_abs_diff_and_exits_by_tolerance(tmp_path):
    hf = fh.make_hf_llama(tmp_path / "hf", seed=1)
    other = fh.make_hf_llama(tmp_path / "other", seed=2)
    conv = tmp_path / "mcore_tp2"
    r = _run("megatron_tulu.checkpoint.convert", "hf-to-mcore", "--hf", str(hf), "--out", str(conv), "--tp", "2", "--pp", "1")
    assert r.returncode == 0, r.stderr

    ok = _run("megatron_tulu.checkpoint.verify", "--hf", str(hf), "--ckpt", str(conv), "--tp", "2", "--pp", "1")
    assert ok.returncode == 0, ok.stderr
    last = ok.stdout.strip().splitlines()[-1]
    assert last.startswith("max_abs_diff=") and float(last.split("=")[1]) <= 1e-4, last

    bad = _run("megatron_tulu.checkpoint.verify", "--hf", str(other), "--ckpt", str(conv), "--tp", "2", "--pp", "1")
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert float(bad.stdout.strip().splitlines()[-1].split("=")[1]) > 1e-2
