"""The reward model's per-pair margin on the data path (``rm.margin_field`` / ``rm.margin_from_ratings``): the RM
task's rows carry the named column (or ``chosen_rating - rejected_rating``) into its micro-batches, the held-out
rows do not, and a row without a usable margin fails at load time naming file:line and the field. In-process (the
RM task's ``setup`` without a distributed runtime); the loss the margin then changes is checked on a real run in
``tests/trainers/test_rm_two_ranks.py``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _margin(line: int) -> int | float:
    return [0, 1.5, 2, 3.25][line % 4]  # ints too: JSON integers are numbers


def _write_pairs(src: Path, out: Path, n: int, edit=None) -> Path:
    """The first ``n`` pairs of ``src`` with ``margin`` = :func:`_margin` of their line; ``edit(line, row)`` may
    change a row."""
    rows = []
    for line, text in enumerate(src.read_text().splitlines()[:n], start=1):
        row = {**json.loads(text), "margin": _margin(line)}
        if edit is not None:
            edit(line, row)
        rows.append(json.dumps(row, allow_nan=True))
    out.write_text("\n".join(rows) + "\n")
    return out


def _task(syn_dir: Path, tmp_path: Path, train: Path, **rm):
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.rm import RMConfig, RMTask

    ov = {"data.root": syn_dir, "data.cache_dir": tmp_path / "cache", "run_dir": tmp_path / "run",
          "data.mixture": f"{{datasets: [{{path: {train}}}]}}", **{f"rm.{k}": v for k, v in rm.items()}}
    task = RMTask(load_config(RMConfig, "rm/tiny", [f"{k}={v}" for k, v in ov.items()]))
    task.setup(SimpleNamespace(run_dir=str(tmp_path / "run")))
    return task


def test_margin_field_reaches_the_rm_batches(syn_dir, tmp_path):
    from megatron_tulu.data.loaders import mix, mixture_from_dict

    train = _write_pairs(syn_dir / "pref_train.jsonl", tmp_path / "pairs.jsonl", 12)
    task = _task(syn_dir, tmp_path, train, margin_field="margin")
    # the trainer's row i is the mixture's row i (same mixture, same seed): its margin is its file line's
    mixed, _ = mix(mixture_from_dict({"datasets": [{"path": str(train)}]}), "preference")
    expect = [float(_margin(r["_line"])) for r in mixed]
    assert len(set(expect)) == 4
    assert [task.rows[i]["margin"] for i in range(len(task.rows))] == expect
    b = task._batch(task.rows, [3, 0, 7], None)
    assert torch.equal(b["margin"], torch.tensor([expect[3], expect[0], expect[7]]))
    # the held-out pairs have no margin column (eval/loss is plain BT); neither has a margin-free build of the
    # same file in the same cache (the margin columns are part of the cache key)
    assert "margin" not in task.eval_rows.column_names and "margin" not in task._batch(task.eval_rows, [0, 1], None)
    plain = _task(syn_dir, tmp_path, train)
    assert "margin" not in plain.rows.column_names and "margin" not in plain._batch(plain.rows, [0], None)


def test_margin_from_ratings_is_chosen_minus_rejected_rating(syn_dir, tmp_path):
    src = FIXTURES / "preference_tulu3_mixture.jsonl"  # the released schema: chosen_rating / rejected_rating
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    task = _task(syn_dir, tmp_path, src, margin_from_ratings="true")
    got = sorted(task.rows[i]["margin"] for i in range(len(task.rows)))
    assert got == sorted(float(r["chosen_rating"] - r["rejected_rating"]) for r in rows)
    assert any(m != 0 for m in got)


@pytest.mark.parametrize("field,value,why", [
    ("margin", None, "missing field 'margin'"),  # None: the key is removed
    ("margin", "1.5", "field 'margin' (the pair's margin) must be a finite number, got '1.5'"),
    ("margin", True, "got True"),
    ("margin", float("nan"), "got nan"),
    ("chosen_rating", None, "missing field 'chosen_rating'"),
])
def test_a_bad_margin_fails_at_load_naming_file_line_and_field(syn_dir, tmp_path, field, value, why):
    from megatron_tulu.data.loaders import DataFileError

    ratings = field == "chosen_rating"

    def spoil(line, row):
        if ratings:
            row.update(chosen_rating=4, rejected_rating=1)
        if line == 3 and value is None:
            del row[field]
        elif line == 3:
            row[field] = value

    train = _write_pairs(syn_dir / "pref_train.jsonl", tmp_path / "bad.jsonl", 5, spoil)
    opts = {"margin_from_ratings": "true"} if ratings else {"margin_field": "margin"}
    with pytest.raises(DataFileError) as e:
        _task(syn_dir, tmp_path, train, **opts)
    assert str(e.value).startswith(f"{train}:3: ") and why in str(e.value), str(e.value)
    assert (e.value.path, e.value.line) == (str(train), 3)


def test_margin_options_are_validated():
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.rm import RMConfig

    assert load_config(RMConfig, "rm/tiny", []).rm.margin_columns == ()
    assert load_config(RMConfig, "rm/tiny", ["rm.margin_field=m"]).rm.margin_columns == ("m",)
    assert load_config(RMConfig, "rm/tiny", ["rm.margin_from_ratings=true"]).rm.margin_columns == (
        "chosen_rating", "rejected_rating")
    with pytest.raises(ValueError, match="give one margin source"):
        load_config(RMConfig, "rm/tiny", ["rm.margin_field=m", "rm.margin_from_ratings=true"])
