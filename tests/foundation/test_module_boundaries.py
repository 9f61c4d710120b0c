"""The seams of ARCHITECTURE.md, checked on the import graph of the library (parsed, not imported):
megatron-core is imported only in models/, checkpoint/, parallel.py and platform.py; lower layers never import
from trainers/; and megatron-core's version is checked against what mcore_compat's workarounds were written for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "megatron_tulu"
MCORE_ALLOWED = ("models/", "checkpoint/", "parallel.py", "platform.py")
BELOW_TRAINERS = ("models/", "checkpoint/", "data/", "losses/", "algorithms/", "rewards/", "rollout/", "kernels/")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _library_files():
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def test_megatron_core_is_imported_only_behind_the_seam():
    offenders = [f"{p.relative_to(LIB)}:{line} imports {mod}"
                 for p in _library_files() if not str(p.relative_to(LIB)).startswith(MCORE_ALLOWED)
                 for line, mod in _imports(p) if mod == "megatron" or mod.startswith("megatron.")]
    assert not offenders, "megatron-core outside models/, checkpoint/, parallel.py, platform.py:\n" + "\n".join(offenders)


def test_lower_layers_do_not_import_trainers():
    offenders = [f"{p.relative_to(LIB)}:{line} imports {mod}"
                 for p in _library_files() if str(p.relative_to(LIB)).startswith(BELOW_TRAINERS)
                 for line, mod in _imports(p) if mod.startswith("megatron_tulu.trainers")]
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from megatron.core import parallel_state\n    import megatron_tulu.trainers.fit\n")
    assert [m for _, m in _imports(f)] == ["megatron.core", "megatron_tulu.trainers.fit"]


def test_megatron_core_version_is_checked():
    from megatron_tulu.models.mcore_compat import check_version, installed_version

    assert check_version() == installed_version()
    with pytest.raises(RuntimeError, match=r"megatron-core 0\.17\.0 is installed.*supports megatron-core>=0\.16"):
        check_version("0.17.0")
