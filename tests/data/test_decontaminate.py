import json
import subprocess
import sys

import numpy as np

from megatron_tulu.data import decontaminate as dc

# 16 distinct words: no accidental n-gram overlaps.
EVAL = [f"w{i:02d}" for i in range(16)]


def _cov(train_texts, eval_texts, n=8):
    v = dc.Vocab()
    ix = dc.build_eval_index("e", eval_texts, v, n)
    scan = dc.scan_training("t", train_texts, np.unique(ix.hashes), v, n, extra_widths=ix.short_widths)
    return dc.coverage(ix, scan.found)


def test_coverage_exactly_at_and_around_half():
    e = " ".join(EVAL)
    c = _cov([" ".join(EVAL[:8])], [e])  # one 8-gram: 8/16 = 50% exactly
    assert c[0] == 0.5
    assert _cov([" ".join(EVAL[:9])], [e])[0] == 9 / 16  # two overlapping 8-grams
    assert _cov([" ".join(EVAL[:7])], [e])[0] == 0.0  # shorter than an n-gram
    # Two disjoint pieces, 8 + 8 -> fully covered; n-grams may not cross training-row boundaries.
    assert _cov([" ".join(EVAL[:8]), " ".join(EVAL[8:])], [e])[0] == 1.0
    assert _cov([" ".join(EVAL[:4]) + " zz " + " ".join(EVAL[4:12])], [e])[0] == 0.5
    # Case and punctuation do not matter (word tokens, lowercased).
    assert _cov([", ".join(EVAL[:9]).upper()], [e])[0] == 9 / 16
    # Eval shorter than n: the whole instance is one n-gram.
    assert list(_cov(["say w01 w02 w03 now"], ["w01 w02 w03", "w01 w02 w09"])) == [1.0, 0.0]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_threshold_share_and_filtered_copy(tmp_path):
    evals = [{"messages": [{"role": "user", "content": " ".join(f"e{k}x{i}" for i in range(16))}]} for k in range(100)]
    ev = _jsonl(tmp_path / "eval.jsonl", evals)

    def sft(text):
        return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "fine"}]}

    eq = lambda k, m: " ".join(f"e{k}x{i}" for i in range(m))  # noqa: E731
    clean = [sft(f"row {i} nothing here at all") for i in range(50)]
    at_half = clean + [sft(eq(k, 8)) for k in range(10)]  # 10 instances exactly at 50% -> not matched
    above = clean + [sft(eq(0, 9)), sft(eq(1, 9))]  # 2 of 100 -> 2.0%: matched but not > 2%
    dirty = clean + [sft(eq(k, 9)) for k in range(3)]  # 3% -> contaminated
    rep = dc.decontaminate({"at_half": _jsonl(tmp_path / "a.jsonl", at_half), "above": _jsonl(tmp_path / "b.jsonl", above),
                            "dirty": _jsonl(tmp_path / "c.jsonl", dirty)}, {"ev": ev}, filtered_dir=str(tmp_path / "f"))
    res = {r["train"]: r for r in rep["results"]}
    assert (res["at_half"]["matched"], res["at_half"]["contaminated"]) == (0, False)
    assert (res["above"]["matched"], res["above"]["share"], res["above"]["contaminated"]) == (2, 0.02, False)
    assert (res["dirty"]["matched"], res["dirty"]["contaminated"]) == (3, True)
    assert rep["filtered"]["dirty"]["removed"] == 3 and rep["filtered"]["at_half"]["removed"] == 0
    kept = [json.loads(l) for l in open(tmp_path / "f" / "c.jsonl")]
    assert kept == clean

    out = subprocess.run([sys.executable, "-m", "megatron_tulu.data.decontaminate", "--train", f"dirty={tmp_path / 'c.jsonl'}",
                          "--eval", ev, "--report", str(tmp_path / "r.json")], capture_output=True, text=True, check=True)
    assert "CONTAMINATED" in out.stdout and json.loads((tmp_path / "r.json").read_text())["results"][0]["matched"] == 3

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(sft("fine row")) + "\n{not json\n")
    out = subprocess.run([sys.executable, "-m", "megatron_tulu.data.decontaminate", "--train", str(bad), "--eval", ev],
                         capture_output=True, text=True)
    assert out.returncode == 2 and f"{bad}:2: malformed JSON" in out.stderr and "Traceback" not in out.stderr
