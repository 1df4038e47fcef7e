import numpy as np
import pytest

from cpueval.batching import collate, padded_length, padding_share, plan_batches


def test_plan_batches_buckets_longest_first_and_covers_every_feature_once():
    lengths = [5, 30, 12, 30, 7, 21]
    batches = plan_batches(lengths, batch_size=2, length_bucketing=True)
    assert [b.tolist() for b in batches] == [[1, 3], [5, 2], [4, 0]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))


def test_plan_batches_without_bucketing_keeps_dataset_order():
    batches = plan_batches([5, 30, 12], batch_size=2, length_bucketing=False)
    assert [b.tolist() for b in batches] == [[0, 1], [2]]


def test_plan_batches_rejects_non_positive_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([1, 2], batch_size=0, length_bucketing=True)


@pytest.mark.parametrize("longest,multiple,cap,expected", [(13, 8, 384, 16), (16, 8, 384, 16), (381, 8, 384, 384),
                                                            (383, 32, 384, 384), (13, 1, 384, 13)])
def test_padded_length_rounds_up_but_never_past_the_cap(longest, multiple, cap, expected):
    assert padded_length(longest, multiple, cap) == expected


def test_collate_pads_each_column_with_its_value_and_reports_real_lengths():
    features = {"input_ids": [[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]],
                "attention_mask": [[1, 1, 1], [1, 1], [1, 1, 1, 1, 1]]}
    batch = collate(features, np.array([2, 1]), ["input_ids", "attention_mask"], {"input_ids": 0}, multiple=4, cap=384)
    assert batch.shape == (2, 8)
    assert batch.inputs["input_ids"].tolist() == [[101, 5, 6, 7, 102, 0, 0, 0], [101, 102, 0, 0, 0, 0, 0, 0]]
    assert batch.inputs["attention_mask"].sum().item() == 7
    assert batch.lengths.tolist() == [5, 2]
    # 16 positions computed, 7 real
    assert padding_share([batch]) == pytest.approx(9 / 16)
