from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def write_cifar10(root: Path, n_per_class_train: int = 12, n_per_class_test: int = 3, seed: int = 0) -> dict:
    """A tiny CIFAR-10 folder in the standard python-pickle layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    ytr = np.repeat(np.arange(10), n_per_class_train)
    rng.shuffle(ytr)
    xtr = rng.integers(0, 256, size=(len(ytr), 3 * 32 * 32), dtype=np.uint8)
    chunks = np.array_split(np.arange(len(ytr)), 5)
    for i, idx in enumerate(chunks, 1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": xtr[idx], b"labels": ytr[idx].tolist(), b"batch_label": b"x"}, f, protocol=2)
    yte = np.repeat(np.arange(10), n_per_class_test)
    xte = rng.integers(0, 256, size=(len(yte), 3 * 32 * 32), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": xte, b"labels": yte.tolist()}, f, protocol=2)
    return {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


@pytest.fixture
def cifar_root(tmp_path):
    arrays = write_cifar10(tmp_path / "data")
    return tmp_path / "data", arrays


TINY = ["--epochs", "2", "--quiet", "--optim.batch_size", "128", "--attack.steps", "2"]
