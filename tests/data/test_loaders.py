import json
from collections import Counter

import pytest

from megatron_tulu.data import loaders
from megatron_tulu.data.loaders import DataFileError, DatasetSource, MixtureConfig, build_dataset, mix

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def _write(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(path)


@pytest.mark.parametrize("bad,reason", [
    ('{"messages": [', "malformed JSON"),
    ({"text": "no messages here"}, "missing field 'messages'"),
    ({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}, "empty assistant turn"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, reason):
    f = _write(tmp_path / "d.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataFileError, match=rf"d\.jsonl:3: .*{reason}"):
        loaders.read_rows(f, "sft")
    skipped = Counter()
    rows = loaders.read_rows(f, "sft", skip_invalid=True, skipped=skipped)
    assert len(rows) == 3 and sum(skipped.values()) == 1 and [r["_line"] for r in rows] == [1, 2, 4]


def test_overlong_prompt_errors_or_is_counted(tmp_path, syn_tok):
    long_user = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    f = _write(tmp_path / "s.jsonl", [GOOD, long_user, GOOD])
    cfg = MixtureConfig(datasets=[DatasetSource(path=f)], seed=0)
    with pytest.raises(DataFileError, match=r"s\.jsonl:2: prompt fills all 32 tokens"):
        build_dataset(cfg, "sft", syn_tok, 32)
    cfg.skip_invalid = True
    ds, rep = build_dataset(cfg, "sft", syn_tok, 32)
    assert len(ds) == 2 and rep.skipped == {"PromptTooLongError": 1}
    rl = {"messages": long_user["messages"][:1], "ground_truth": "1", "dataset": "gsm8k"}
    f2 = _write(tmp_path / "r.jsonl", [rl])
    with pytest.raises(DataFileError, match=r"r\.jsonl:1: prompt has \d+ tokens > max_len 32"):
        build_dataset(MixtureConfig(datasets=[DatasetSource(path=f2)]), "rlvr", syn_tok, 32)
    f3 = _write(tmp_path / "m.jsonl", [{"messages": rl["messages"], "dataset": "gsm8k"}])
    with pytest.raises(DataFileError, match=r"m\.jsonl:1: missing field 'ground_truth'"):
        loaders.read_rows(f3, "rlvr")


def test_long_responses_are_truncated_and_counted(tmp_path, syn_tok):
    long_answer = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 200}]}
    f = _write(tmp_path / "t.jsonl", [GOOD, long_answer, GOOD, long_answer])
    ds, rep = build_dataset(MixtureConfig(datasets=[DatasetSource(path=f)], seed=0), "sft", syn_tok, 32)
    assert len(ds) == 4 and rep.truncated == 2 and rep.skipped == {}
    assert max(len(x) for x in ds["input_ids"]) == 32 and all(len(x) == len(y) for x, y in zip(ds["input_ids"], ds["labels"]))
    assert "truncated 2," in rep.summary()


def _numbered(tmp_path, name, n):
    rows = [{"messages": [{"role": "user", "content": f"{name} {i}"}, {"role": "assistant", "content": "ok"}]} for i in range(n)]
    return _write(tmp_path / f"{name}.jsonl", rows)


def test_mixture_counts_fractions_and_report(tmp_path):
    a, b, c = _numbered(tmp_path, "a", 50), _numbered(tmp_path, "b", 40), _numbered(tmp_path, "c", 10)
    cfg = MixtureConfig(datasets=[DatasetSource(path=a, count=20), DatasetSource(path=b, fraction=0.25, name="bee"),
                                  DatasetSource(path=c, count=25)], seed=7)
    rows, rep = mix(cfg, "sft")
    src = Counter(r["messages"][0]["content"].split()[0] for r in rows)
    assert src == {"a": 20, "b": 10, "c": 25}
    assert [(s.name, s.rows_available, s.rows_taken) for s in rep.sources] == [("a.jsonl", 50, 20), ("bee", 40, 10), ("c.jsonl", 10, 25)]
    a_taken = [r["messages"][0]["content"] for r in rows if r["messages"][0]["content"].startswith("a ")]
    assert len(set(a_taken)) == 20  # without replacement while count <= size
    c_taken = Counter(r["messages"][0]["content"] for r in rows if r["messages"][0]["content"].startswith("c "))
    assert sorted(c_taken.values()) == [2] * 5 + [3] * 5  # upsampled: two full passes + 5 more
    again, _ = mix(cfg, "sft")
    assert [r["messages"] for r in again] == [r["messages"] for r in rows]
    other, _ = mix(MixtureConfig(datasets=cfg.datasets, seed=8), "sft")
    assert [r["messages"] for r in other] != [r["messages"] for r in rows]
    assert loaders.mixture_from_dict({a: 5, b: 0.5}).datasets[1].fraction == 0.5


def test_cache_reuse_and_invalidation(tmp_path, syn_dir, syn_tok):
    cfg = MixtureConfig(datasets=[DatasetSource(path=str(syn_dir / "sft_train.jsonl"), count=30)], seed=1)
    calls = []

    def counting(*a, **k):
        calls.append(1)
        return loaders.tokenize_rows(*a, **k)

    ds1, r1 = build_dataset(cfg, "sft", syn_tok, 128, cache_dir=tmp_path / "c", tokenize_fn=counting)
    ds2, r2 = build_dataset(cfg, "sft", syn_tok, 128, cache_dir=tmp_path / "c", tokenize_fn=counting)
    assert len(calls) == 1 and not r1.cache_hit and r2.cache_hit and r1.cache_key == r2.cache_key
    assert ds1["input_ids"] == ds2["input_ids"] and ds1["labels"] == ds2["labels"] and len(ds1) == 30
    build_dataset(cfg, "sft", syn_tok, 64, cache_dir=tmp_path / "c", tokenize_fn=counting)  # new max_len
    build_dataset(cfg, "sft", syn_tok, 128, template="tokenizer", cache_dir=tmp_path / "c", tokenize_fn=counting)
    assert len(calls) == 3
    # same bytes under another name: the name seeds the row selection, so this must not reuse the cache
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_bytes((syn_dir / "sft_train.jsonl").read_bytes())
    cfg2 = MixtureConfig(datasets=[DatasetSource(path=str(renamed), count=30)], seed=1)
    ds3, r3 = build_dataset(cfg2, "sft", syn_tok, 128, cache_dir=tmp_path / "c", tokenize_fn=counting)
    assert len(calls) == 4 and not r3.cache_hit and r3.cache_key != r1.cache_key
    assert ds3["input_ids"] != ds1["input_ids"]  # another selection of 30 rows


def test_all_kinds_and_parquet(tmp_path, syn_dir, syn_tok):
    import datasets

    for kind, name, cols in [("preference", "pref_train.jsonl", {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}),
                             ("rlvr", "rlvr_train.jsonl", {"prompt_ids", "ground_truth", "dataset"}),
                             ("text", "pretrain.jsonl", {"input_ids"})]:
        ds, rep = build_dataset(MixtureConfig(datasets=[DatasetSource(path=str(syn_dir / name), count=10)]), kind, syn_tok, 256)
        assert set(ds.column_names) == cols and len(ds) == 10 and rep.rows == 10
    pq = tmp_path / "sft.parquet"
    datasets.Dataset.from_list([{"messages": GOOD["messages"]}, {"messages": [{"role": "user", "content": "x"}]}]).to_parquet(str(pq))
    with pytest.raises(DataFileError, match=r"sft\.parquet:2: .*no assistant turn"):
        loaders.read_rows(pq, "sft")


def test_mixture_yaml_examples_parse():
    from pathlib import Path

    from omegaconf import OmegaConf

    cdir = Path(__file__).resolve().parents[2] / "configs" / "data"
    files = sorted(cdir.glob("*.yaml"))
    assert {f.stem for f in files} >= {"synthetic_sft", "synthetic_dpo", "synthetic_rlvr", "tulu3_sft_mix"}
    for f in files:
        node = OmegaConf.create({"data": OmegaConf.load(f)})
        d = OmegaConf.to_container(node, resolve=True)["data"]
        for key in ("mixture", "eval_mixture"):
            if key in d:
                cfg = loaders.mixture_from_dict(d[key])
                assert cfg.datasets and all(s.path.startswith(d["root"]) for s in cfg.datasets), f
    tulu = OmegaConf.to_container(OmegaConf.create({"data": OmegaConf.load(cdir / "tulu3_sft_mix.yaml")}), resolve=True)
    entries = tulu["data"]["mixture"]["datasets"]
    # the 19 `source` values of allenai/tulu-3-sft-mixture, one file, counts summing to the card's 939,344
    assert len({e["source"] for e in entries}) == len(entries) == 19 and len({e["path"] for e in entries}) == 1
    assert sum(e["count"] for e in entries) == 939_344


def test_hub_dataset_without_network_names_the_dataset(monkeypatch):
    """``hf://org/name`` goes through datasets.load_dataset; offline (as in tests) it fails naming the dataset."""
    import pytest as _pytest

    from megatron_tulu.data.loaders import read_rows

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with _pytest.raises(FileNotFoundError, match="allenai/no-such-dataset-for-tests"):
        read_rows("hf://allenai/no-such-dataset-for-tests:train", "sft")
