import pickle

import numpy as np
import pytest
import torch

from ltadv.config import load_config
from ltadv.data import DataError, build_data, load_split


def test_tiny_cifar_folder_is_read(cifar_root):
    root, arrays = cifar_root
    x, y = load_split("cifar10-lt", "test", root=str(root))
    assert x.shape == (30, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(y, torch.from_numpy(arrays["yte"]))
    expected = torch.from_numpy(arrays["xte"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(x, expected)


def test_tiny_cifar_long_tail(cifar_root):
    root, arrays = cifar_root
    cfg = load_config(overrides={"data.name": "cifar10-lt", "data.root": str(root), "data.val_per_class": 2,
                                 "data.imbalance_ratio": 5})
    d = build_data(cfg.data, 0)
    assert d.class_counts[0] == 10 and d.class_counts[-1] == 2
    assert torch.bincount(d.y_train, minlength=10).tolist() == d.class_counts
    # every training image is one of the written images with its label
    flat = {bytes(r): int(l) for r, l in zip(arrays["xtr"], arrays["ytr"])}
    for img, lab in zip(d.x_train.reshape(len(d.y_train), -1).numpy(), d.y_train.tolist()):
        assert flat[bytes(img)] == lab


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_split("cifar10-lt", "test", root=str(tmp_path / "nope"))


def test_corrupt_file(cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="corrupt dataset file"):
        load_split("cifar10-lt", "test", root=str(root))


def test_hostile_pickle_is_refused(cifar_root, tmp_path):
    root, _ = cifar_root
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        load_split("cifar10-lt", "test", root=str(root))
    assert not marker.exists()


def test_too_many_classes(cifar_root):
    root, _ = cifar_root
    cfg = load_config(overrides={"data.name": "cifar10-lt", "data.root": str(root), "data.num_classes": 12})
    with pytest.raises(DataError, match="has only 10 classes"):
        build_data(cfg.data, 0)


def test_digits_load_split_shapes():
    x, y = load_split("digits-lt", "test")
    assert x.shape == (500, 1, 8, 8) and np.bincount(y.numpy()).tolist() == [50] * 10
