import torch

from megatron_tulu.data.packing import block_causal_mask, pack_sft


def _ex(n, start, prompt=1):
    ids = list(range(start, start + n))
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}


def test_packing_boundaries_and_positions():
    exs = [_ex(4, 100), _ex(3, 200), _ex(5, 300), _ex(2, 400)]
    res = pack_sft(exs, seq_len=8, pad_id=0)
    r0, r1 = res.rows
    assert r0["input_ids"] == [100, 101, 102, 103, 200, 201, 202, 0]
    assert r0["position_ids"] == [0, 1, 2, 3, 0, 1, 2, 0]
    assert r0["cu_seqlens"] == [0, 4, 7, 8] and r0["num_docs"] == 2
    assert r0["labels"] == [-100, 101, 102, 103, -100, 201, 202, -100]
    assert r1["input_ids"] == [300, 301, 302, 303, 304, 400, 401, 0]
    assert r1["cu_seqlens"] == [0, 5, 7, 8]
    st = res.stats
    assert (st.documents, st.packed_documents, st.rows, st.tokens, st.pad_tokens) == (4, 4, 2, 14, 2)


def test_exact_fill_has_no_pad_segment():
    res = pack_sft([_ex(4, 10), _ex(4, 20)], seq_len=8, pad_id=0)
    assert len(res.rows) == 1 and res.rows[0]["cu_seqlens"] == [0, 4, 8] and res.stats.pad_tokens == 0


def test_truncation_and_drop_counts():
    exs = [_ex(12, 0), _ex(3, 50), {"input_ids": [1, 2], "labels": [-100, -100]}]
    t = pack_sft(exs, 8, 0, overflow="truncate")
    assert t.stats.truncated == 1 and t.stats.dropped_no_labels == 1 and t.rows[0]["input_ids"] == list(range(8))
    d = pack_sft(exs, 8, 0, overflow="drop")
    assert d.stats.dropped_too_long == 1 and d.stats.packed_documents == 1 and d.rows[0]["input_ids"][:3] == [50, 51, 52]


def test_block_mask_never_crosses_documents():
    m = block_causal_mask([0, 4, 7, 8], 8)
    assert m[5, 4] and m[6, 4] and not m[4, 3] and not m[7, 6] and not m[3, 5]
    # A packed row gives the same attention outputs per document as each document alone.
    torch.manual_seed(0)
    q = torch.randn(8, 4)
    att = torch.softmax((q @ q.T).masked_fill(~m, float("-inf")), -1) @ q
    alone = torch.softmax((q[4:7] @ q[4:7].T).masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), float("-inf")), -1) @ q[4:7]
    torch.testing.assert_close(att[4:7], alone)
