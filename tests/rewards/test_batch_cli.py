"""verify_batch (workers, in-process path, timeouts, metrics) and the score CLI contract."""

import json
import subprocess
import time
import sys
from pathlib import Path

import pytest

from megatron_tulu.rewards import verify_batch

REPO = Path(__file__).resolve().parents[2]

IFEVAL_GT = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [None]}


def mixed_records():
    return [
        {"dataset": "gsm8k", "response": "so 42", "ground_truth": "42", "id": "a"},
        {"dataset": "gsm8k", "response": "so 41", "ground_truth": "42", "id": "b"},
        {"dataset": "math", "response": r"\boxed{\frac{1}{2}}", "ground_truth": "0.5", "id": "c"},
        {"dataset": "math", "response": r"\boxed{3}", "ground_truth": "4", "id": "d"},
        {"dataset": "ifeval", "response": "no commas", "ground_truth": IFEVAL_GT, "id": "e"},
        {"dataset": "ifeval", "response": "a, b", "ground_truth": json.dumps(IFEVAL_GT), "id": "f"},
    ]


EXPECTED = [True, False, True, False, True, False]


@pytest.mark.parametrize("workers, inprocess_below", [(0, 32), (2, 0)])
def test_verify_batch_in_order(workers, inprocess_below):
    records = mixed_records() * 3
    verdicts, metrics = verify_batch(records, workers=workers, inprocess_below=inprocess_below)
    assert verdicts == EXPECTED * 3
    assert metrics["n"] == 18 and metrics["correct"] == 9 and metrics["timeouts"] == 0 and metrics["errors"] == 0
    assert metrics["by_dataset"]["math"] == {"n": 6, "correct": 3}
    assert metrics["workers"] == (0 if workers == 0 else 2)


# Passes every input guard (5 variables, so no numeric probing) yet sympy's simplify runs for minutes.
SLOW = {"dataset": "math", "response": r"\boxed{(a+b+c+d+f)^{40}-(a-b+c-d+f)^{40}}", "ground_truth": "a^{2}+b^{2}"}


def test_verify_batch_worker_timeout_is_counted_and_incorrect():
    # 24 records -> chunks of 3 per worker: slow items in the middle of chunks, the rest must be requeued
    records = (mixed_records() * 4)[:24]
    for i in (1, 10, 11):
        records[i] = SLOW
    expected = [False if i in (1, 10, 11) else e for i, e in enumerate((EXPECTED * 4)[:24])]
    start = time.monotonic()
    verdicts, metrics = verify_batch(records, workers=2, timeout_s=1.0, inprocess_below=0)
    assert verdicts == expected
    assert metrics["timeouts"] == 3 and metrics["errors"] == 0
    assert time.monotonic() - start < 30


def test_verify_batch_inprocess_timeout_counted():
    verdicts, metrics = verify_batch([SLOW, mixed_records()[0]], workers=0, timeout_s=1.0)
    assert verdicts == [False, True] and metrics["timeouts"] == 1


def test_verify_batch_rejects_bad_record_with_index():
    records = mixed_records()
    records[3] = {"dataset": "math", "response": 5, "ground_truth": "1"}
    with pytest.raises(ValueError, match="record 3: field 'response'"):
        verify_batch(records)
    with pytest.raises(ValueError, match="record 0: field 'dataset'.*unknown dataset 'code'"):
        verify_batch([{"dataset": "code", "response": "", "ground_truth": ""}])


def run_cli(stdin_text, *args):
    return subprocess.run(
        [sys.executable, "-m", "megatron_tulu.rewards.score", *args],
        input=stdin_text, capture_output=True, text=True, cwd=REPO, timeout=120,
    )


def test_cli_stdin_order_and_extra_fields():
    records = mixed_records()
    proc = run_cli("".join(json.dumps(r) + "\n" for r in records), "-", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in records]
    assert [o["correct"] for o in out] == EXPECTED
    assert out[5]["ground_truth"] == json.dumps(IFEVAL_GT)  # string ground truth kept as given


def test_cli_malformed_lines_reported_with_line_numbers(tmp_path):
    records = mixed_records()
    lines = [json.dumps(records[0]), "{not json", json.dumps(records[2]),
             json.dumps({"dataset": "gsm8k", "response": "1"}), json.dumps(records[4]),
             json.dumps({"dataset": "gsm8k", "response": "1", "ground_truth": "one"}),
             json.dumps({"dataset": "ifeval", "response": "1", "ground_truth": {"instruction_id_list": ["x:y"]}})]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = run_cli("", str(path), "--workers", "0")
    assert proc.returncode == 1
    assert f"{path}:2: invalid JSON" in proc.stderr
    assert f"{path}:4: missing field 'ground_truth'" in proc.stderr
    assert f"{path}:6: field 'ground_truth': gsm8k ground_truth must be a number" in proc.stderr
    assert f"{path}:7: field 'ground_truth': " in proc.stderr and "unknown instruction id 'x:y'" in proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == ["a", "c", "e"]  # the valid lines, in order, still written
    assert [o["correct"] for o in out] == [True, True, True]


def test_cli_paper_compat_flag():
    line = json.dumps({"dataset": "gsm8k", "response": "it is 24.00", "ground_truth": "24"}) + "\n"
    assert json.loads(run_cli(line, "-").stdout)["correct"] is True
    assert json.loads(run_cli(line, "-", "--paper-compat").stdout)["correct"] is False


def test_cli_missing_file():
    proc = run_cli("", "/nonexistent/x.jsonl")
    assert proc.returncode == 2 and "/nonexistent/x.jsonl" in proc.stderr


TWO_CONSTRAINTS = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [None, None]}


@pytest.mark.parametrize("workers, inprocess_below", [(0, 32), (2, 0)])
def test_dataset_names_any_case_and_ifeval_partial_credit(workers, inprocess_below):
    """Released RLVR rows say `MATH`; the verdicts keep the records' spelling. With partial credit an IFEval row scores
    the fraction of its constraints met (in worker processes too); without, all or nothing."""
    records = [{"dataset": "MATH", "response": r"\boxed{2}", "ground_truth": "2"},
               {"dataset": "GSM8K", "response": "so 7", "ground_truth": "7"},
               {"dataset": "IFEval", "response": "Lower, but a comma", "ground_truth": TWO_CONSTRAINTS}] * 2
    verdicts, metrics = verify_batch(records, workers=workers, inprocess_below=inprocess_below)
    assert verdicts == [True, True, False] * 2 and set(metrics["by_dataset"]) == {"MATH", "GSM8K", "IFEval"}
    scores, metrics = verify_batch(records, workers=workers, inprocess_below=inprocess_below, ifeval_partial_credit=True)
    assert scores == [1.0, 1.0, 0.0] * 2  # "Lower" breaks lowercase, the comma breaks no_comma
    records[2] = dict(records[2], response="this is a plain english sentence, written in lower case letters, with one comma")
    scores, metrics = verify_batch(records, workers=workers, inprocess_below=inprocess_below, ifeval_partial_credit=True)
    assert scores[2] == 0.5 and metrics["by_dataset"]["IFEval"] == {"n": 2, "correct": 0.5}


def test_cli_keeps_the_dataset_spelling_and_takes_partial_credit():
    records = [{"dataset": "MATH", "response": r"\boxed{2}", "ground_truth": "2"},
               {"dataset": "ifeval", "response": "this is a plain english sentence, written in lower case letters, with one comma", "ground_truth": TWO_CONSTRAINTS}]
    r = run_cli("".join(json.dumps(x) + "\n" for x in records), "-", "--ifeval-partial-credit")
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0, r.stderr
    assert [o["dataset"] for o in out] == ["MATH", "ifeval"] and [o["correct"] for o in out] == [1.0, 0.5]
