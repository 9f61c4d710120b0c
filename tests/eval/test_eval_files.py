"""``python -m megatron_tulu.eval --file TASK=PATH``: released eval sets read as users hold them.

Schema detection and ground-truth extraction are pure functions; the prompt builders are checked for their
shots and the chat template; scoring and the output contract run in-process against a scripted engine; ONE
end-to-end CLI run generates with a tiny random Llama through TorchEngine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_tulu.eval.evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate_files, main
from megatron_tulu.eval.files import (
    EvalFileError,
    detect_schema,
    gsm8k_ground_truth,
    ifeval_ground_truth,
    last_boxed,
    load_eval_file,
    math_ground_truth,
    parse_file_arg,
)
from megatron_tulu.eval.prompts import GSM8K_EXEMPLARS, MATH_EXEMPLARS, eval_messages

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
GSM8K, MATH, MATH500 = FIX / "eval_gsm8k_openai.jsonl", FIX / "eval_math_hendrycks.jsonl", FIX / "eval_math500.jsonl"
IFEVAL, IFEVAL_PQ, WRONG = FIX / "eval_ifeval_google.jsonl", FIX / "eval_ifeval_google.parquet", FIX / "eval_wrong_schema.jsonl"


# ------------------------------------------------------------------------------------ schema + ground truth
@pytest.mark.parametrize("path, schema, dataset", [
    (GSM8K, "openai/gsm8k", "gsm8k"), (MATH, "hendrycks/MATH", "math"), (MATH500, "hendrycks/MATH", "math"),
    (IFEVAL, "google/IFEval", "ifeval"), (IFEVAL_PQ, "google/IFEval", "ifeval"),
])
def test_schema_detected_from_fields(path, schema, dataset):
    s, examples = load_eval_file(path)
    assert s.name == schema and {ex.dataset for ex in examples} == {dataset}


def test_rlvr_rows_keep_their_messages_and_dataset_case_insensitive(tmp_path):
    f = tmp_path / "rlvr.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "1+1?"}], "ground_truth": "2",
                             "dataset": "MATH"}) + "\n")
    s, [ex] = load_eval_file(f)
    assert s.name == "rlvr" and ex.dataset == "math" and ex.messages == [{"role": "user", "content": "1+1?"}]


def test_ground_truths_as_released():
    assert [ex.ground_truth for ex in load_eval_file(GSM8K)[1]] == ["22", "1500", "9"]  # "#### 1,500" -> 1500
    assert gsm8k_ground_truth("so 3 + 4 = 7\n#### -1,234.5") == "-1234.5"
    with pytest.raises(ValueError, match="####"):
        gsm8k_ground_truth("The answer is 5.")
    # hendrycks MATH: the LAST \boxed/\fbox, balanced and escaped braces kept whole
    assert [ex.ground_truth for ex in load_eval_file(MATH)[1]] == [r"\frac{3}{4}", r"\{-2, 2\}", "9"]
    # MATH-500: its answer field wins over the solution
    assert [ex.ground_truth for ex in load_eval_file(MATH500)[1]] == ["10", r"\frac{5}{2}"]
    assert math_ground_truth({"problem": "p", "solution": r"\boxed{1}", "answer": "2"}) == "2"
    assert last_boxed(r"$\boxed{\sqrt{x^{2}}}$ then \fbox{a{b}c} end") == "a{b}c"
    assert last_boxed(r"so \boxed 5$.") == "5"
    assert last_boxed(r"\boxed{ok} and \boxed{never closed") == "ok"
    assert last_boxed("no box") is None
    with pytest.raises(ValueError, match="boxed"):
        math_ground_truth({"problem": "p", "solution": "no box here"})


def test_ifeval_kwargs_drop_none_entries_jsonl_and_parquet_agree():
    js = [ex.ground_truth for ex in load_eval_file(IFEVAL)[1]]
    pq = [ex.ground_truth for ex in load_eval_file(IFEVAL_PQ)[1]]
    assert js == pq  # Parquet stores every kwargs struct with all argument names, unused ones None
    assert js[0] == {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
                     "kwargs": [{}, {"relation": "at least", "num_words": 30}]}
    assert js[1]["kwargs"] == [{}, {"end_phrase": "is there anything else?"}]
    assert ifeval_ground_truth({"instruction_id_list": ["a"], "kwargs": [None]})["kwargs"] == [{}]


def test_wrong_schema_refused_naming_file_and_missing_fields():
    with pytest.raises(EvalFileError) as e:
        load_eval_file(WRONG)
    msg = str(e.value)
    assert str(WRONG) in msg and "matches no known eval schema" in msg
    for field in ("question", "problem", "solution", "instruction_id_list", "kwargs", "messages"):
        assert field in msg, field
    with pytest.raises(EvalFileError, match="openai/gsm8k needs question, answer \\(lacks answer\\)"):
        detect_schema(["question"], where="x.jsonl")


def test_bad_row_refused_naming_file_and_line(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text(GSM8K.read_text() + json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(EvalFileError, match=rf"{f}:4: .*####"):
        load_eval_file(f)
    assert len(load_eval_file(f, limit=3)[1]) == 3  # --limit reads only what it evaluates


def test_file_arg_parsing():
    assert parse_file_arg("gsm=data/test.parquet") == ("gsm", "data/test.parquet")
    for bad in ("noequals", "=x.jsonl", "a/b=x.jsonl", "results=x.jsonl"):
        with pytest.raises(ValueError, match="--file"):
            parse_file_arg(bad)


# ------------------------------------------------------------------------------------------------- prompts
def test_prompts_hold_the_shots_in_one_user_turn_through_the_chat_template():
    from megatron_tulu.data.chat import render

    tok = SimpleNamespace(eos_token="</s>")
    assert len(GSM8K_EXEMPLARS) == 8 and len(MATH_EXEMPLARS) == 4
    gsm = eval_messages("gsm8k", "How many apples?")
    assert [m["role"] for m in gsm] == ["user"]
    text = render(gsm, tok, "tulu", add_generation_prompt=True)
    assert text.startswith("<|user|>\nQuestion: There are 15 trees") and text.endswith(
        "Question: How many apples?\nAnswer:\n<|assistant|>\n")
    assert text.count("Question: ") == 9 and text.count("So the answer is ") == 8
    assert "So the answer is 8.\n\nQuestion: How many apples?" in text
    math = render(eval_messages("math", "What is $1+1$?"), tok, "tulu", add_generation_prompt=True)
    assert math.startswith("<|user|>\nProblem:\nFind the domain") and math.endswith(
        "Problem:\nWhat is $1+1$?\n\nSolution:\n<|assistant|>\n")
    assert math.count("Problem:\n") == 5 and math.count("Final Answer: The final answer is $") == 4
    assert math.count("I hope it is correct.") == 4 and r"30n&=480\\" + "\n" in math
    assert render(eval_messages("ifeval", "Write a haiku."), tok, "tulu", add_generation_prompt=True) == \
        "<|user|>\nWrite a haiku.\n<|assistant|>\n"


# ------------------------------------------------------------------------------ scoring + outputs, in-process
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from megatron_tulu.data.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tok")
    texts = [q + " " + a for q, a in GSM8K_EXEMPLARS + MATH_EXEMPLARS] * 3
    train_bpe_tokenizer(texts, out, vocab_size=512)
    return out


class ScriptedEngine:
    """A RolloutEngine stand-in answering each prompt with a fixed text; records the sampling configs."""

    def __init__(self, tok, answer):
        self.tok, self.answer, self.calls = tok, answer, []

    def generate(self, prompts, sampling):
        from megatron_tulu.rollout.base import Generation

        self.calls.append((len(prompts), sampling.max_new_tokens, sampling.temperature))
        ids = self.tok(self.answer, add_special_tokens=False)["input_ids"]
        return [Generation(i, [list(ids)], [[0.0] * len(ids)], ["stop"]) for i in range(len(prompts))]

    def shutdown(self):
        raise AssertionError("a caller's engine is not shut down by evaluate_files")


def _read_jsonl(p):
    return [json.loads(l) for l in Path(p).read_text().splitlines()]


def test_outputs_contract_with_scripted_engine(tokenizer_dir, tmp_path):
    from megatron_tulu.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    engine = ScriptedEngine(tok, "Step by step. So the answer is 22.")
    files = [("gsm", str(GSM8K)), ("hendrycks", str(MATH)), ("if_pq", str(IFEVAL_PQ))]
    res = evaluate_files("unused-ckpt", files, tmp_path, tokenizer=str(tokenizer_dir), engine=engine, workers=0)
    assert json.loads((tmp_path / "results.json").read_text()) == res
    assert set(res) == {"gsm", "hendrycks", "if_pq"}
    assert res["gsm"]["n"] == 3 and res["gsm"]["correct"] == 1 and res["gsm"]["accuracy"] == pytest.approx(1 / 3)
    assert res["hendrycks"]["correct"] == 0 and res["hendrycks"]["schema"] == "hendrycks/MATH"
    assert [c[1:] for c in engine.calls] == [(DEFAULT_MAX_NEW_TOKENS[d], 0.0) for d in ("gsm8k", "math", "ifeval")]
    for task, r in res.items():
        lines = _read_jsonl(tmp_path / f"{task}.jsonl")
        assert len(lines) == r["n"] and sum(l["correct"] for l in lines) == r["correct"]
        assert all(isinstance(l["correct"], bool) for l in lines) and r["timeouts"] == 0
        assert all(l["prompt"].startswith("<|user|>\n") and l["prompt"].endswith("<|assistant|>\n") for l in lines)
    gsm = _read_jsonl(tmp_path / "gsm.jsonl")
    assert [l["ground_truth"] for l in gsm] == ["22", "1500", "9"] and gsm[0]["response"].endswith("is 22.")
    assert _read_jsonl(tmp_path / "if_pq.jsonl")[1]["ground_truth"]["kwargs"][0] == {}


def test_ifeval_partial_credit_passes_the_keyword(tokenizer_dir, tmp_path):
    from megatron_tulu.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    # no comma, but far fewer than 30 words: one of row 0's two instructions is followed
    engine = ScriptedEngine(tok, "the cat is lost and we miss her so much")
    kw = {"tokenizer": str(tokenizer_dir), "engine": engine, "workers": 0, "limit": 1}
    strict = evaluate_files("unused", [("if", str(IFEVAL))], tmp_path / "strict", **kw)["if"]
    partial = evaluate_files("unused", [("if", str(IFEVAL))], tmp_path / "partial", ifeval_partial_credit=True, **kw)["if"]
    assert strict["accuracy"] == 0.0 and strict["correct"] == 0
    assert partial["accuracy"] == pytest.approx(0.5) and partial["correct"] == 0 and partial["ifeval_partial_credit"]
    [line] = _read_jsonl(tmp_path / "partial" / "if.jsonl")
    assert line["correct"] is False and line["score"] == pytest.approx(0.5)


def test_partial_credit_without_rewards_support_is_a_clear_type_error(tokenizer_dir, tmp_path, monkeypatch):
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.rewards import batch

    monkeypatch.setattr(batch, "verify_batch", lambda records, workers=None, timeout_s=3.0, *, paper_compat=False: None)
    engine = ScriptedEngine(load_tokenizer(tokenizer_dir), "x")
    with pytest.raises(TypeError, match="ifeval_partial_credit"):
        evaluate_files("unused", [("if", str(IFEVAL))], tmp_path, tokenizer=str(tokenizer_dir), engine=engine,
                       ifeval_partial_credit=True)
    assert not engine.calls  # refused before generating


def test_cli_refuses_bad_files_before_any_engine_or_tokenizer(tmp_path, capsys):
    # the checkpoint does not exist: reaching the tokenizer or an engine would fail differently
    ckpt = str(tmp_path / "no-such-ckpt")
    rc = main(["--ckpt", ckpt, "--file", f"gsm={GSM8K}", "--file", f"bad={WRONG}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(WRONG) in err and "lacks" in err and "question" in err
    bad_ifeval = tmp_path / "ifeval.jsonl"
    bad_ifeval.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["no:such_id"],
                                      "kwargs": [{}]}) + "\n")
    assert main(["--ckpt", ckpt, "--file", f"i={bad_ifeval}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad_ifeval}:1" in err and "no:such_id" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["--ckpt", ckpt, "--file", f"gsm={GSM8K}"])  # --out DIR is required with --file
    with pytest.raises(SystemExit):
        main(["--ckpt", ckpt, "--file", f"gsm={GSM8K}", "--data", "d", "--out", "o"])  # one input mode


def test_cli_data_mode_refuses_bad_files_and_an_engine_it_cannot_start_before_any_engine(tokenizer_dir, tmp_path,
                                                                                            capsys, monkeypatch):
    # --data mode read its files only after starting the engine (a missing eval_math.jsonl surfaced after gsm8k
    # was generated), and an engine that could not start printed a traceback
    ckpt = str(tmp_path / "no-such-ckpt")  # reaching an engine would fail differently
    data = tmp_path / "data"
    data.mkdir()
    row = {"messages": [{"role": "user", "content": "What is 1 + 1?"}], "ground_truth": "2", "dataset": "gsm8k"}
    (data / "eval_gsm8k.jsonl").write_text(json.dumps(row) + "\n")
    args = ["--ckpt", ckpt, "--data", str(data), "--tokenizer", str(tokenizer_dir), "--engine", "vllm"]
    assert main(args + ["--tasks", "gsm8k,math"]) == 2
    assert str(data / "eval_math.jsonl") in capsys.readouterr().err
    (data / "eval_math.jsonl").write_text(json.dumps(dict(row, dataset="no_such_verifier")) + "\n")
    assert main(args + ["--tasks", "gsm8k,math"]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'eval_math.jsonl'}:1" in err and "no_such_verifier" in err
    monkeypatch.setenv("MT_VLLM_PYTHON", str(tmp_path / "no-such-python"))  # the image's variable on another host
    assert main(args + ["--tasks", "gsm8k"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "MT_VLLM_PYTHON" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------- end to end, one process
@pytest.mark.slow
def test_cli_end_to_end_tiny_llama_torch_engine(tokenizer_dir, tmp_path):
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_tulu.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(ckpt), safe_serialization=True)
    for f in Path(tokenizer_dir).iterdir():  # the checkpoint directory carries its tokenizer, as HF exports do
        shutil.copy(f, ckpt / f.name)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "megatron_tulu.eval", "--ckpt", str(ckpt), "--file", f"gsm={GSM8K}",
           "--file", f"math500={MATH500}", "--file", f"ifeval={IFEVAL_PQ}", "--engine", "torch", "--limit", "2",
           "--max-new-tokens", "8", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert json.loads(proc.stdout) == res and set(res) == {"gsm", "math500", "ifeval"}
    for task, r in res.items():
        assert r["n"] == 2 and r["max_new_tokens"] == 8 and 0 <= r["correct"] <= r["n"]
        assert r["accuracy"] == pytest.approx(r["correct"] / r["n"]) and r["timeouts"] >= 0
        lines = _read_jsonl(out / f"{task}.jsonl")
        assert len(lines) == r["n"] and sum(l["correct"] for l in lines) == r["correct"]
        for l in lines:
            assert isinstance(l["correct"], bool) and isinstance(l["response"], str)
            assert set(l) >= {"prompt", "response", "ground_truth", "correct"}
    gsm = _read_jsonl(out / "gsm.jsonl")
    assert gsm[0]["prompt"].startswith("<|user|>\nQuestion: There are 15 trees") and gsm[0]["ground_truth"] == "22"
    assert _read_jsonl(out / "math500.jsonl")[1]["ground_truth"] == r"\frac{5}{2}"
    assert _read_jsonl(out / "ifeval.jsonl")[0]["ground_truth"]["kwargs"] == [{}, {"relation": "at least", "num_words": 30}]
