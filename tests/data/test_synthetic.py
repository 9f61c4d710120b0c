import hashlib
import json
import re

import pytest

from megatron_tulu.data.chat import tokenize_sft
from megatron_tulu.data.synthetic import generate

IFEVAL_IDS = {
    "change_case:english_lowercase": set(),
    "punctuation:no_comma": set(),
    "length_constraints:number_words": {"relation", "num_words"},
    "keywords:existence": {"keywords"},
    "startend:end_checker": {"end_phrase"},
    "detectable_format:number_bullet_lists": {"num_bullets"},
    "detectable_format:json_format": set(),
}


def _rows(d, name):
    return [json.loads(l) for l in open(d / name, encoding="utf-8")]


def _digests(d):
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_identical_files(syn_dir, tmp_path):
    generate(tmp_path / "again", seed=0, scale="ci")
    assert _digests(tmp_path / "again") == _digests(syn_dir)
    other = generate(tmp_path / "other", seed=1, scale="ci")
    assert other["sha256"]["sft_train.jsonl"] != json.loads((syn_dir / "manifest.json").read_text())["sha256"]["sft_train.jsonl"]


def test_manifest_and_schemas(syn_dir, syn_tok):
    man = json.loads((syn_dir / "manifest.json").read_text())
    for name, n in man["counts"].items():
        assert len(_rows(syn_dir, name)) == n > 0
    assert 512 <= len(syn_tok) <= 1024
    for r in _rows(syn_dir, "sft_train.jsonl"):
        assert len(tokenize_sft(r["messages"], syn_tok, None)["input_ids"]) < 256
    for fam in ("gsm8k", "math", "ifeval"):
        for r in _rows(syn_dir, f"eval_{fam}.jsonl"):
            assert r["dataset"] == fam and r["messages"][-1]["role"] == "user"
            if fam == "ifeval":
                gt = json.loads(r["ground_truth"])
                assert len(gt["instruction_id_list"]) == len(gt["kwargs"])
                for iid, kw in zip(gt["instruction_id_list"], gt["kwargs"]):
                    assert set(kw) == IFEVAL_IDS[iid]


def test_eval_prompts_not_in_training(syn_dir):
    evals = {r["messages"][-1]["content"] for f in ("gsm8k", "math", "ifeval") for r in _rows(syn_dir, f"eval_{f}.jsonl")}
    train = {m["content"] for r in _rows(syn_dir, "sft_train.jsonl") for m in r["messages"] if m["role"] == "user"}
    train |= {r["messages"][-1]["content"] for r in _rows(syn_dir, "rlvr_train.jsonl")}
    train |= {r["chosen"][-2]["content"] for r in _rows(syn_dir, "pref_train.jsonl")}
    assert not evals & train


def _own_check(dataset, response, gt):
    """Independent minimal checker of the synthetic answers (the project verifier is tested below when present)."""
    if dataset == "gsm8k":
        return re.findall(r"-?\d+", response)[-1] == gt and response.rstrip().endswith(f"#### {gt}")
    if dataset == "math":
        m = re.findall(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", response)
        return bool(m) and m[-1] == gt
    spec = json.loads(gt)
    ok = True
    for iid, kw in zip(spec["instruction_id_list"], spec["kwargs"]):
        if iid == "change_case:english_lowercase":
            ok &= response == response.lower()
        elif iid == "punctuation:no_comma":
            ok &= "," not in response
        elif iid == "length_constraints:number_words":
            n = len(re.findall(r"\w+", response))
            ok &= n < kw["num_words"] if kw["relation"] == "less than" else n >= kw["num_words"]
        elif iid == "keywords:existence":
            ok &= all(re.search(k, response, re.I) for k in kw["keywords"])
        elif iid == "startend:end_checker":
            ok &= response.strip().lower().endswith(kw["end_phrase"].strip().lower())
        elif iid == "detectable_format:number_bullet_lists":
            ok &= len(re.findall(r"^\s*\*[^\*].*$", response, re.M)) == kw["num_bullets"]
        elif iid == "detectable_format:json_format":
            try:
                json.loads(response)
            except ValueError:
                ok = False
    return ok


def _pairs(syn_dir):
    """(dataset, chosen, rejected-or-None, ground truth) for every SFT answer and preference pair as written,
    plus 450 fresh instances (150 per family) for broader coverage of the templates."""
    import random

    from megatron_tulu.data import synthetic

    for r in _rows(syn_dir, "sft_train.jsonl"):
        yield r["dataset"], r["messages"][-1]["content"], None, r["ground_truth"]
    for name in ("pref_train.jsonl", "pref_eval.jsonl"):
        for r in _rows(syn_dir, name):
            yield r["dataset"], r["chosen"][-1]["content"], r["rejected"][-1]["content"], r["ground_truth"]
    rng = random.Random(123)
    for fam, gen in synthetic.FAMILIES.items():
        for _ in range(150):
            ex = gen(rng)
            yield fam, ex.chosen, ex.rejected, ex.ground_truth


def test_chosen_pass_rejected_fail_own_checker(syn_dir):
    n = 0
    for fam, c, r, gt in _pairs(syn_dir):
        assert _own_check(fam, c, gt), (fam, c, gt)
        if r is not None:
            assert not _own_check(fam, r, gt), (fam, r, gt)
            assert c != r
        n += 1
    assert n > 450


def test_chosen_pass_rejected_fail_project_verifier(syn_dir):
    from megatron_tulu import rewards
    for fam, c, r, gt in _pairs(syn_dir):
        assert rewards.verify(fam, c, gt), (fam, c, gt)
        if r is not None:
            assert not rewards.verify(fam, r, gt), (fam, r, gt)


def test_chatty_teacher_sft_rows_fail_only_by_the_remark_and_nothing_else_changes(syn_dir, tmp_path):
    """``sft_chatty``: that fraction of GSM8K-like SFT answers is the right solution plus a numeric remark after
    the answer line (marked ``teacher: chatty``; the checker fails it, the solution without the remark passes);
    every other answer is unchanged and verifies, same prompts; the other splits are unchanged."""
    from megatron_tulu import rewards

    man = generate(tmp_path / "chatty", seed=0, scale="ci", sft_chatty=0.5)
    assert man["sft_chatty"] == 0.5
    clean, chat = _rows(syn_dir, "sft_train.jsonl"), _rows(tmp_path / "chatty", "sft_train.jsonl")
    assert [r["messages"][:-1] for r in chat] == [r["messages"][:-1] for r in clean]
    flagged = [(a, b) for a, b in zip(clean, chat) if b.get("teacher") == "chatty"]
    gsm = [r for r in chat if r["dataset"] == "gsm8k"]
    assert all(b["dataset"] == "gsm8k" for _, b in flagged) and 0.25 * len(gsm) <= len(flagged) <= 0.75 * len(gsm)
    for a, b in flagged:
        right, talk = a["messages"][-1]["content"], b["messages"][-1]["content"]
        assert talk.startswith(right + "\n") and re.search(r"\d", talk[len(right):])
        assert not rewards.verify("gsm8k", talk, b["ground_truth"]) and rewards.verify("gsm8k", right, b["ground_truth"])
    for a, b in zip(clean, chat):
        if b.get("teacher") != "chatty":
            assert a == b
    for name in ("pref_train.jsonl", "pref_eval.jsonl", "rlvr_train.jsonl", "pretrain.jsonl",
                 "eval_gsm8k.jsonl", "eval_math.jsonl", "eval_ifeval.jsonl"):
        assert man["sha256"][name] == json.loads((syn_dir / "manifest.json").read_text())["sha256"][name], name
    with pytest.raises(ValueError, match="sft_chatty"):
        generate(tmp_path / "bad", scale="ci", sft_chatty=1.0)
