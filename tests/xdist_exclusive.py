"""How `make test`'s two pytest-xdist workers share the machine (``-n 2 --dist loadfile``; used by conftest.py).

A file with a test that starts real vLLM engines (vLLM's start-up memory check counts what the other worker holds,
and a TP=2 engine binds both cores) or submits SLURM jobs (the local SLURM has the machine's 2 CPUs) must not
overlap another such file: these are the *exclusive* files (tests marked :data:`EXCLUSIVE_MARKS`).

- :class:`ExclusiveFirstScheduling` replaces xdist's loadfile scheduler: the exclusive files are one work unit, run
  one after another by one worker while the other worker runs the other files a file at a time. (A lock alone
  serialised them but left a worker idle whenever it drew an exclusive file while the other ran one: ~4 minutes of
  a 31-minute run on 2026-12-07. xdist's own ``loadgroup`` would express this, but xdist 3.8 renames items through
  ``item._nodeid``, which pytest 9 no longer reads: the groups are silently ignored.)
- :func:`prepare_items` (on each worker, at collection): the exclusive files first, then the ``slow`` files,
  then the rest. xdist hands files out in collection order, so the long files start early and none is left to run
  alone at the end. The workers tell the scheduler which files are exclusive through a small file (the controller
  process collects nothing, and a test id carries no marks).
- the lock (:func:`pytest_runtest_protocol`): under the other ``--dist`` modes (and ``-n`` > 2 with any) a worker
  holds a lock the workers share while it runs an exclusive file, so two never overlap.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # a venv without pytest-xdist (gpu_session.py's): xdist calls none of the hooks below there
    LoadScopeScheduling = object

EXCLUSIVE_MARKS = ("vllm", "slurm")
EXCLUSIVE_UNIT = "exclusive files (vllm, slurm)"


def _run_file(testrunuid: str, kind: str) -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"megatron-tulu-{testrunuid}-{kind}"


def prepare_items(config, items) -> None:
    """From ``pytest_collection_modifyitems``: note the exclusive files on ``config``, and on an xdist worker reorder
    ``items`` (exclusive files, slow files, the rest; stable within each) and write the exclusive files' ids for
    :class:`ExclusiveFirstScheduling`."""
    config.exclusive_files = {item.path for item in items
                              if any(item.get_closest_marker(m) for m in EXCLUSIVE_MARKS)}
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if uid is None:
        return
    rank = {item.path: 0 if item.path in config.exclusive_files else 1 if item.get_closest_marker("slow") else 2
            for item in items}
    items.sort(key=lambda item: rank[item.path])
    ids = sorted({item.nodeid.split("::")[0] for item in items if item.path in config.exclusive_files})
    target = _run_file(uid, "exclusive-files.json")
    tmp = target.with_suffix(f".{os.environ['PYTEST_XDIST_WORKER']}.tmp")
    tmp.write_text(json.dumps(ids))
    os.replace(tmp, target)  # every worker writes the same list: whichever lands last is whole


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return ExclusiveFirstScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


class ExclusiveFirstScheduling(LoadScopeScheduling):
    """xdist's loadfile with every exclusive file in one work unit (see the module docstring). Without the workers'
    list (a worker that wrote none) it is plain loadfile, and the lock still keeps exclusive files apart."""

    _exclusive: set | None = None

    def __init__(self, config, log=None):
        super().__init__(config, log)
        config.option.loadscopereorder = False  # hand files out in collection order, not by their number of tests

    def _split_scope(self, nodeid: str) -> str:
        file = nodeid.split("::", 1)[0]
        if self._exclusive is None:
            self.config.exclusive_run_uid = self.nodes[0].workerinput["testrunuid"]  # for pytest_sessionfinish
            listing = _run_file(self.config.exclusive_run_uid, "exclusive-files.json")
            self._exclusive = set(json.loads(listing.read_text())) if listing.exists() else set()
            listing.unlink(missing_ok=True)
        return EXCLUSIVE_UNIT if file in self._exclusive else file


def pytest_sessionfinish(session):
    """The controller, once every worker is done: remove the run's lock file (a worker cannot: the other may still
    take it, and a lock file removed and made again would be two locks)."""
    uid = getattr(session.config, "exclusive_run_uid", None)
    if uid is not None and not hasattr(session.config, "workerinput"):
        _run_file(uid, "exclusive.lock").unlink(missing_ok=True)


_exclusive_lock: dict = {}  # "file": the open lock file while this worker runs an exclusive file


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, hold the workers' shared lock while this worker runs an exclusive file: taken before the
    file's first test starts (before its module fixtures start engines or jobs, and before pytest-timeout's timer:
    the wait for the other worker's file is not charged to that test), released after the file's last test (its
    module fixtures torn down)."""
    if ("PYTEST_XDIST_WORKER" in os.environ and "file" not in _exclusive_lock
            and item.path in getattr(item.config, "exclusive_files", ())):
        f = open(_run_file(os.environ.get("PYTEST_XDIST_TESTRUNUID", "run"), "exclusive.lock"), "w")
        fcntl.flock(f, fcntl.LOCK_EX)
        _exclusive_lock["file"] = f
    yield
    if "file" in _exclusive_lock and (nextitem is None or nextitem.path != item.path):
        f = _exclusive_lock.pop("file")
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
