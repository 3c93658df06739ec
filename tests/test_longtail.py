import numpy as np
import pytest
import torch

from ltadv.config import load_config
from ltadv.data import build_data, long_tail_counts
from ltadv.data.longtail import split_indices


def test_reference_cifar10_counts():
    # SPEC section 6: CIFAR-10-LT IR 50 = 13,996 images.
    counts = long_tail_counts(5000, 10, 50)
    assert counts == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    assert sum(counts) == 13996


def test_reference_cifar100_counts():
    counts = long_tail_counts(500, 100, 10)
    assert counts[0] == 500 and counts[-1] == 50 and sum(counts) == 19573


def test_step_profile():
    assert long_tail_counts(100, 6, 10, "step") == [100] * 3 + [10] * 3


def test_ir_below_one_is_an_error():
    with pytest.raises(ValueError, match="imbalance ratio must be >= 1"):
        long_tail_counts(100, 10, 0.5)


def test_split_is_fixed_by_seed_and_disjoint():
    labels = np.repeat(np.arange(5), 40)
    counts = long_tail_counts(30, 5, 6)
    a_tr, a_val = split_indices(labels, counts, 5, seed=3)
    b_tr, b_val = split_indices(labels, counts, 5, seed=3)
    c_tr, _ = split_indices(labels, counts, 5, seed=4)
    assert np.array_equal(a_tr, b_tr) and np.array_equal(a_val, b_val)
    assert not np.array_equal(a_tr, c_tr)
    assert not set(a_tr) & set(a_val)
    assert np.bincount(labels[a_tr]).tolist() == counts
    assert np.bincount(labels[a_val]).tolist() == [5] * 5


def test_digits_lt_split():
    cfg = load_config(overrides={"data.name": "digits-lt"})
    d = build_data(cfg.data, seed=0)
    assert d.num_classes == 10 and d.in_channels == 1 and d.image_size == 8
    assert torch.bincount(d.y_train).tolist() == d.class_counts
    assert d.class_counts[0] / d.class_counts[-1] == pytest.approx(10, rel=0.1)
    assert torch.bincount(d.y_test).tolist() == [50] * 10  # balanced test split
    assert torch.bincount(d.y_val).tolist() == [10] * 10  # balanced validation split
    assert d.x_train.dtype == torch.uint8 and int(d.x_train.max()) <= 255
