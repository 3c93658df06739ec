"""Long-tail counts, subset draws and epoch orders: literal counts, odd class counts, properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ltadv.data.longtail import ldam_counts, ldam_indices, long_tail_counts, split_indices
from ltadv.data.sampler import balanced_order, epoch_order, uniform_order


def test_exp_counts_literals():
    # n_i = floor(n_max * IR^(-i / (C - 1))): 100 * 3.5^(-1/6) = 81.2, 100 * 3.5^(-1/2) = 53.5, ...
    assert long_tail_counts(100, 7, 3.5) == [100, 81, 65, 53, 43, 35, 28]
    assert long_tail_counts(1000, 10, 100) == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert long_tail_counts(37, 4, 1) == [37, 37, 37, 37]  # IR 1: balanced
    assert long_tail_counts(5, 4, 100) == [5, 1, 1, 1]  # never below one image
    assert long_tail_counts(9, 1, 10) == [9]


def test_step_counts_odd_class_count():
    # LDAM step profile: the first C // 2 classes keep n_max; with C = 5 that is 2 head classes, 3 tail
    assert long_tail_counts(100, 5, 10, "step") == [100, 100, 10, 10, 10]
    assert long_tail_counts(7, 3, 2, "step") == [7, 3, 3]
    assert long_tail_counts(100, 6, 10, "step") == [100, 100, 100, 10, 10, 10]
    assert long_tail_counts(3, 2, 100, "step") == [3, 1]  # n_max / IR < 1 floors to one image


@pytest.mark.parametrize("args,match", [
    ((100, 10, 0.5), r"^imbalance ratio must be >= 1 \(n_max / n_min\), got 0.5$"),
    ((0, 10, 2), r"^n_max and num_classes must be >= 1, got 0 and 10$"),
    ((10, 0, 2), r"^n_max and num_classes must be >= 1, got 10 and 0$"),
    ((10, 3, 2, "linear"), r"^unknown long-tail profile 'linear'; choose exp or step$"),
])
def test_long_tail_counts_errors(args, match):
    with pytest.raises(ValueError, match=match):
        long_tail_counts(*args)


def test_ir_exactly_one_and_n_max_one_are_valid():
    assert long_tail_counts(1, 3, 1.0) == [1, 1, 1]
    assert long_tail_counts(10, 2, 1.0, "step") == [10, 10]


def test_ldam_counts_literals():
    # kaidic/LDAM-DRW imbalance_cifar.py get_img_num_per_cls: int(img_max * imb_factor**(i / (C - 1.0)))
    assert ldam_counts(5000.0, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert ldam_counts(50.0, 3, 3) == [50, 28, 16]
    assert ldam_counts(7.0, 1, 5) == [7]
    assert ldam_counts(100.0, 6, 10, "step") == [100, 100, 100, 10, 10, 10]
    assert ldam_counts(100.0, 5, 10, "step") == [100, 100, 10, 10, 10]
    assert ldam_counts(2.0, 3, 10) == [2, 1, 1]  # never below one image
    assert ldam_counts(5.0, 2, 100, "step") == [5, 1]
    with pytest.raises(ValueError, match=r"^unknown long-tail profile 'x'; choose exp or step$"):
        ldam_counts(10.0, 3, 2, "x")


LABELS = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 0, 1, 2])


def test_ldam_indices_match_the_authors_global_numpy_draw():
    # The authors' procedure with the global generator (LDAM-DRW gen_imbalanced_data), written out
    state = np.random.get_state()
    try:
        np.random.seed(0)
        train, val = [], []
        for c, n in zip(np.unique(LABELS), [3, 2, 1]):
            idx = np.where(LABELS == c)[0]
            np.random.shuffle(idx)
            train.append(idx[:n])
            val.append(idx[n:n + 1])
    finally:
        np.random.set_state(state)
    got_tr, got_val = ldam_indices(LABELS, [3, 2, 1], 1)
    assert got_tr.tolist() == np.concatenate(train).tolist() == [6, 9, 3, 2, 8, 11]
    assert got_val.tolist() == np.concatenate(val).tolist() == [1, 5, 0]


def test_ldam_indices_too_many_requested():
    with pytest.raises(ValueError, match=r"^class 1 has 4 images, 4 requested for training and 1 for validation$"):
        ldam_indices(LABELS, [1, 4, 1], 1)
    ldam_indices(LABELS, [1, 3, 1], 1)  # exactly all images of class 1: allowed


def test_split_indices_literals_and_errors():
    tr, val = split_indices(LABELS, [2, 1, 1], 1, seed=5)
    assert tr.tolist() == [3, 6, 10, 4] and val.tolist() == [9, 8, 11]
    tr, val = split_indices(LABELS, None, 2, seed=5)  # None: every image left after the hold-out
    assert tr.tolist() == [1, 6, 2, 5, 0, 7] and val.tolist() == [9, 3, 8, 10, 11, 4]
    with pytest.raises(ValueError, match=r"^class 0 has 3 images after the validation hold-out, 4 requested$"):
        split_indices(LABELS, [4, 1, 1], 1, seed=0)
    tr, _ = split_indices(LABELS, [3, 3, 3], 1, seed=0)  # exactly what is left: allowed
    assert len(tr) == 9


def test_uniform_order_literals_and_seed_epoch():
    # pinned: a resumed run must see the loop's original order bit for bit
    assert uniform_order(6, 1, 2).tolist() == [4, 5, 1, 2, 3, 0]
    assert uniform_order(6, 0, 0).tolist() == [2, 5, 3, 0, 1, 4]
    assert uniform_order(6, 1, 3).tolist() != uniform_order(6, 1, 2).tolist()


SAMPLER_LABELS = torch.tensor([0, 0, 0, 1, 2, 2, 0, 1])


def test_balanced_order_literal():
    assert balanced_order(SAMPLER_LABELS, 3, 1).tolist() == [5, 0, 7, 3, 5, 5, 4, 6]
    assert balanced_order(SAMPLER_LABELS, 3, 1, num_classes=5).tolist() == [5, 0, 7, 3, 5, 5, 4, 6]


def test_balanced_order_is_class_uniform_and_covers_each_class():
    labels = torch.tensor([0] * 90 + [1] * 9 + [3] * 1)  # class 2 absent, class 3 a single image
    order = balanced_order(labels, 0, 0)
    assert len(order) == 100
    counts = torch.bincount(labels[order], minlength=4).tolist()
    assert counts[2] == 0
    assert all(20 <= counts[c] <= 47 for c in (0, 1, 3))  # about 100 / 3 each, not 90 / 9 / 1
    assert set(order[labels[order] == 1].tolist()) == set(range(90, 99))  # all 9 images of class 1 drawn
    assert set(order[labels[order] == 3].tolist()) == {99}
    many = balanced_order(torch.tensor([0] * 5 + [1] * 5), 1, 0)
    assert int((many < 5).sum()) not in (0, 10)


def test_balanced_order_differs_by_epoch_and_from_uniform():
    a, b = balanced_order(SAMPLER_LABELS, 3, 1), balanced_order(SAMPLER_LABELS, 3, 2)
    assert a.tolist() != b.tolist()
    assert epoch_order("balanced", SAMPLER_LABELS, 3, 1, 10).tolist() == a.tolist()


def test_epoch_order_deferred_resampling():
    # DRS: uniform for the first floor(0.5 * 10) = 5 epochs, balanced from epoch 5 on
    for epoch in (0, 4):
        assert epoch_order("balanced", SAMPLER_LABELS, 3, epoch, 10, 0.5).tolist() == \
            uniform_order(8, 3, epoch).tolist()
    assert epoch_order("balanced", SAMPLER_LABELS, 3, 5, 10, 0.5).tolist() == \
        balanced_order(SAMPLER_LABELS, 3, 5).tolist()
    assert epoch_order("balanced", SAMPLER_LABELS, 3, 2, 7, 0.45).tolist() == \
        uniform_order(8, 3, 2).tolist()  # floor(3.15) = 3 > 2
    assert epoch_order("balanced", SAMPLER_LABELS, 3, 3, 7, 0.45).tolist() == \
        balanced_order(SAMPLER_LABELS, 3, 3).tolist()
    assert epoch_order("uniform", SAMPLER_LABELS, 3, 9, 10, 0.5).tolist() == uniform_order(8, 3, 9).tolist()
    with pytest.raises(ValueError, match=r"^unknown sampler 'cb'; choose uniform or balanced$"):
        epoch_order("cb", SAMPLER_LABELS, 3, 9, 10)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(0, 1000), st.integers(0, 50))
def test_balanced_order_draws_only_present_classes(labels, seed, epoch):
    labels = torch.tensor(labels)
    order = balanced_order(labels, seed, epoch)
    assert len(order) == len(labels)
    assert int(order.min()) >= 0 and int(order.max()) < len(labels)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5000), st.integers(2, 60), st.floats(1.0, 200.0))
def test_exp_counts_properties(n_max, c, ir):
    counts = long_tail_counts(n_max, c, ir)
    assert len(counts) == c and counts[0] == n_max
    assert all(a >= b >= 1 for a, b in zip(counts, counts[1:]))
    assert counts[-1] == max(1, int(n_max / ir + 1e-9)) or abs(counts[-1] - n_max / ir) < 1
