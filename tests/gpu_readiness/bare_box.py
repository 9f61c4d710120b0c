"""A stand-in for the lent GPU box on this machine: a fresh venv that holds only PyTorch and Triton (what the box
brings), into which ``benchmarks/gpu_session.py`` installs the carried wheels the way it does there."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

BOX_PACKAGES = ("torch", "triton")  # the box has Python, PyTorch and Triton, nothing else of ours


def _dist_closure(names) -> list[md.Distribution]:
    """The installed distributions ``names`` need, themselves included (extras left out)."""
    seen, out, stack = set(), [], list(names)
    while stack:
        dist = md.distribution(stack.pop())
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(dist)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0)
            try:
                md.distribution(name)
            except md.PackageNotFoundError:
                continue  # an optional platform dependency this machine does not have
            stack.append(name)
    return out


def make_bare_venv(root: Path) -> Path:
    """``root/venv`` with pip, whose only importable packages are :data:`BOX_PACKAGES` and their own
    dependencies (linked from this interpreter's environment, not reinstalled); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    py = root / "venv" / "bin" / "python"
    base = root / "box_site"
    base.mkdir()
    for dist in _dist_closure(BOX_PACKAGES):
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if top != "__pycache__" and src.exists() and not (base / top).exists():
                os.symlink(src, base / top)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "gpu_box.pth").write_text(str(base) + "\n")
    return py
