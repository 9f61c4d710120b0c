import pytest
import torch

from megatron_tulu.data.sampler import EpochSampler, collate, collate_preference, shard_batch


def test_epochs_cover_all_and_reshuffle():
    s = EpochSampler(10, 3, seed=5)
    assert len(s) == 3
    e0 = list(s)
    e1 = list(s)
    assert len(e0) == 3 and all(len(b) == 3 for b in e0)
    assert len({i for b in e0 for i in b}) == 9 and e0 != e1
    assert list(EpochSampler(10, 3, seed=5)) == e0  # depends only on seed and epoch
    assert len(list(EpochSampler(10, 3, seed=5, drop_last=False))) == 4


def test_exact_resume():
    ref = EpochSampler(11, 4, seed=3)
    seq = [ref.next_batch() for _ in range(9)]  # crosses epochs (2 batches per epoch)
    s = EpochSampler(11, 4, seed=3)
    for _ in range(5):
        s.next_batch()
    state = s.state_dict()
    t = EpochSampler(11, 4, seed=3)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(4)] == seq[5:]
    with pytest.raises(ValueError, match="global_batch"):
        EpochSampler(11, 2, seed=3).load_state_dict(state)


def test_shard_and_errors():
    assert shard_batch([5, 6, 7, 8], 1, 2) == [7, 8]
    with pytest.raises(ValueError, match="does not split"):
        shard_batch([1, 2, 3], 0, 2)
    with pytest.raises(ValueError, match="cannot fill"):
        EpochSampler(3, 4)


def test_collate_shapes_and_masks():
    b = collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}], pad_id=0,
                pad_to_multiple_of=4)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3, -100], [4, -100, -100, -100]]
    assert b["attention_mask"].tolist() == [[True, True, True, False], [True, False, False, False]]
    assert b["loss_mask"].tolist() == [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0], [0, 0, 0, 0]]
    packed = collate([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "position_ids": [0, 1, 0, 1]}], 0)
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1]]
    p = collate_preference([{"chosen_input_ids": [1, 2], "chosen_labels": [-100, 2],
                             "rejected_input_ids": [1, 3, 3], "rejected_labels": [-100, 3, 3]}], 0)
    assert p["num_pairs"] == 1 and p["input_ids"].shape == torch.Size([2, 3])
    assert p["input_ids"].tolist() == [[1, 2, 0], [1, 3, 3]]
