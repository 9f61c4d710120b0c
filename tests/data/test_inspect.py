"""``python -m megatron_tulu.data.inspect``: what it prints is the stage's own tokenization, exactly."""

import json
import re

import pytest

from megatron_tulu.data import inspect as insp
from megatron_tulu.data.chat import IGNORE_INDEX
from megatron_tulu.data.loaders import read_rows, tokenize_rows

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(capsys, *argv):
    rc = insp.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _blocks(out: str) -> list[str]:
    """One block of output per row (split on the ``=== file:line`` headers)."""
    return [b for b in re.split(r"^(?==== )", out, flags=re.MULTILINE) if b.startswith("=== ")]


def _side(block: str, name: str) -> dict:
    """Header counts, printed text and printed loss spans of one side of a row block."""
    m = re.search(rf"^\[{name}\] tokens: (\d+) total, (\d+) with loss; truncated: (.*)$", block, re.MULTILINE)
    assert m, block
    start = block.index("\n", block.index(f"--- {name} text:")) + 1
    end = block.index(f"\n--- {name} loss", start)
    spans = []
    for line in block[end + 1:].split("\n")[1:]:  # the span lines right after the side's loss header
        m_span = re.fullmatch(r"\[(\d+), (\d+)\) ('.*'|\".*\")", line)
        if not m_span:
            break
        spans.append((int(m_span[1]), int(m_span[2]), eval(m_span[3])))
    return {"total": int(m[1]), "loss": int(m[2]), "truncated": m[3], "text": block[start:end], "spans": spans}


def _expected(path, kind, tok, max_len=4096, n=3):
    """The first ``n`` rows of ``path`` and the stage's tokenization of each."""
    rows = read_rows(path, kind)[:n]
    return rows, [tokenize_rows([r], kind, tok, max_len, "tulu")[0] for r in rows]


def _check_side(side: dict, ids, labels, tok):
    assert side["text"] == tok.decode(ids)
    assert side["total"] == len(ids)
    loss_positions = {i for i, lab in enumerate(labels) if lab != IGNORE_INDEX}
    printed = {i for a, b, _ in side["spans"] for i in range(a, b)}
    assert printed == loss_positions and side["loss"] == len(loss_positions)
    for a, b, txt in side["spans"]:
        assert txt == tok.decode(ids[a:b])


def test_sft_rows_are_the_stage_tokenization(syn_dir, syn_tok, capsys):
    f = syn_dir / "sft_train.jsonl"
    rc, out, err = _run(capsys, f, "--kind", "sft", "--tokenizer", syn_dir / "tokenizer", "--rows", 2, "--no-color")
    assert rc == 0, err
    assert "\x1b[" not in out
    rows, toks = _expected(f, "sft", syn_tok)
    blocks = _blocks(out)
    assert len(blocks) == 2
    for block, row, t in zip(blocks, rows, toks):
        assert block.startswith(f"=== {f}:{row['_line']} ")
        side = _side(block, "sft")
        _check_side(side, t["input_ids"], t["labels"], syn_tok)
        assert side["loss"] > 0 and side["truncated"].startswith("no")
    assert f"2 of {len(read_rows(f, 'sft'))} rows of {f} shown" in out


def test_preference_shows_chosen_then_rejected(syn_dir, syn_tok, capsys):
    f = syn_dir / "pref_train.jsonl"
    rc, out, err = _run(capsys, f, "--kind", "preference", "--tokenizer", syn_dir / "tokenizer", "--rows", 3,
                        "--no-color")
    assert rc == 0, err
    assert "\x1b[" not in out
    _, toks = _expected(f, "preference", syn_tok)
    blocks = _blocks(out)
    assert len(blocks) == 3
    for block, t in zip(blocks, toks):
        assert block.index("[chosen]") < block.index("[rejected]")
        for name in ("chosen", "rejected"):
            _check_side(_side(block, name), t[f"{name}_input_ids"], t[f"{name}_labels"], syn_tok)
        assert _side(block, "chosen")["text"] != _side(block, "rejected")["text"]


def test_truncation_at_max_len_is_reported(syn_dir, syn_tok, capsys):
    f = syn_dir / "sft_train.jsonl"
    rc, out, err = _run(capsys, f, "--kind", "sft", "--tokenizer", syn_dir / "tokenizer", "--rows", 1,
                        "--max-len", 30, "--no-color")
    assert rc == 0, err
    rows, toks = _expected(f, "sft", syn_tok, max_len=30, n=1)
    full = tokenize_rows(rows[:1], "sft", syn_tok, None)[0]
    assert len(full["input_ids"]) > 30  # the row is longer than the limit, so the stage cuts it
    side = _side(_blocks(out)[0], "sft")
    _check_side(side, toks[0]["input_ids"], toks[0]["labels"], syn_tok)
    assert side["total"] == 30
    assert side["truncated"] == f"yes, {len(full['input_ids'])} -> 30 tokens (max len 30)"


def test_rlvr_prompt_ground_truth_and_verifier(syn_dir, syn_tok, capsys, tmp_path):
    src = [json.loads(x) for x in (syn_dir / "rlvr_train.jsonl").read_text().splitlines()[:3]]
    src[0]["dataset"] = src[0]["dataset"].upper()  # the registry matches names case-insensitively
    f = tmp_path / "rlvr.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in src))
    rc, out, err = _run(capsys, f, "--kind", "rlvr", "--tokenizer", syn_dir / "tokenizer", "--no-color")
    assert rc == 0, err
    assert "\x1b[" not in out
    _, toks = _expected(f, "rlvr", syn_tok)
    from megatron_tulu.rewards.registry import get_verifier

    for block, row, t in zip(_blocks(out), src, toks):
        side = _side(block, "prompt")
        assert side["text"] == syn_tok.decode(t["prompt_ids"]) and side["total"] == len(t["prompt_ids"])
        assert side["loss"] == 0 and side["spans"] == []
        fn = get_verifier(row["dataset"])
        assert f"dataset: {row['dataset']!r} -> verifier {fn.__module__}.{fn.__qualname__}" in block
        assert f"ground truth: {t['ground_truth']!r}" in block
        if row["dataset"].lower() == "ifeval":
            assert f"ground truth (parsed JSON): {json.dumps(json.loads(t['ground_truth']))}" in block
    assert "'GSM8K'" in out or "'IFEVAL'" in out or "'MATH'" in out


def test_color_highlights_exactly_the_loss_tokens(syn_dir, syn_tok, capsys):
    f = syn_dir / "pref_train.jsonl"
    rc, out, err = _run(capsys, f, "--kind", "preference", "--tokenizer", syn_dir / "tokenizer", "--rows", 1,
                        "--color")
    assert rc == 0, err
    _, toks = _expected(f, "preference", syn_tok)
    block = _blocks(out)[0]
    for name in ("chosen", "rejected"):
        ids, labels = toks[0][f"{name}_input_ids"], toks[0][f"{name}_labels"]
        start = block.index("\n", block.index(f"--- {name} text:")) + 1
        shown = block[start:block.index(f"\n--- {name} loss", start)]
        assert insp.LOSS_STYLE in shown
        assert ANSI.sub("", shown) == syn_tok.decode(ids)
        highlighted = "".join(re.findall(re.escape(insp.LOSS_STYLE) + r"(.*?)" + re.escape(insp.RESET), shown, re.DOTALL))
        expected = "".join(syn_tok.decode(ids[a:b]) for a, b in insp.loss_spans(labels)).replace("\n", "")
        assert highlighted == expected


@pytest.mark.parametrize("bad, kind, reason", [
    ("{not json", "sft", "malformed JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "sft", "no assistant turn"),
    ('{"messages": [{"role": "user", "content": "hi"}], "ground_truth": "1", "dataset": "nope"}', "rlvr",
     "unknown dataset 'nope'"),
])
def test_bad_row_is_one_line_error_naming_file_and_line(syn_dir, capsys, tmp_path, bad, kind, reason):
    good = (syn_dir / ("sft_train.jsonl" if kind == "sft" else "rlvr_train.jsonl")).read_text().splitlines()[:2]
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(good + [bad]) + "\n")
    rc, _, err = _run(capsys, f, "--kind", kind, "--tokenizer", syn_dir / "tokenizer", "--rows", 5, "--no-color")
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{f}:3:" in err and reason in err


def test_prompt_longer_than_max_len_names_file_and_line(syn_dir, capsys):
    f = syn_dir / "rlvr_train.jsonl"
    rc, _, err = _run(capsys, f, "--kind", "rlvr", "--tokenizer", syn_dir / "tokenizer", "--max-len", 5)
    assert rc == 2 and f"{f}:1:" in err and "max_len 5" in err


def test_loss_spans():
    assert insp.loss_spans([]) == []
    assert insp.loss_spans([-100, 1, 2, -100, 3]) == [(1, 3), (4, 5)]
    assert insp.loss_spans([5, 6]) == [(0, 2)]
