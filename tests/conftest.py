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


def identity_model():
    """A 3 -> 3 linear model without bias whose logits are its input (a known gradient for hand checks)."""
    m = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.eye(3))
    return m


def clean_digits_model(epochs: int):
    """(eval-mode small CNN trained cleanly on digits-lt for ``epochs`` epochs with Adam, the data): a model
    the attack tests can break and not break (seconds on CPU)."""
    import torch.nn as nn

    from ltadv.config import load_config
    from ltadv.data import build_data
    from ltadv.models import build_model

    torch.manual_seed(0)
    d = build_data(load_config(overrides={"data.name": "digits-lt"}).data, 0)
    model = build_model("small_cnn", 10, 1, d.mean, d.std)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = d.x_train.float() / 255, d.y_train
    for _ in range(epochs):
        for i in range(0, len(y), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), d


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU does not thrash (opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cifar_root(tmp_path):
    arrays = write_cifar10(tmp_path / "data")
    return tmp_path / "data", arrays


TINY = ["--epochs", "2", "--quiet", "--optim.batch_size", "128", "--attack.steps", "2"]


def write_cifar100(root: Path, n_per_class_train: int = 6, n_per_class_test: int = 1, seed: int = 0) -> dict:
    """A tiny CIFAR-100 folder (``cifar-100-python/train`` and ``test`` with ``fine_labels``)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", n_per_class_train), ("test", n_per_class_test)):
        y = np.repeat(np.arange(100), n)
        rng.shuffle(y)
        x = rng.integers(0, 256, size=(len(y), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist()}, f, protocol=2)
        out[name] = (x, y)
    return out


def write_tiny_imagenet(root: Path, n_per_class_train: int = 2, seed: int = 0) -> None:
    """A tiny Tiny-ImageNet-200 folder in its standard layout (200 classes, 64x64 JPEGs, one val image each)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        d = folder / "train" / w / "images"
        d.mkdir(parents=True)
        for k in range(n_per_class_train):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{k}.JPEG")
        img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        img.save(folder / "val" / "images" / f"val_{c}.JPEG")
        lines.append(f"val_{c}.JPEG\t{w}\t0\t0\t64\t64")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


# The fast lane (`make test-fast`, -m "not slow"): a test that trains a model, runs a training or
# evaluation command, or uses a module fixture that trains one is slow, marked here so that new tests of
# that kind join the slow lane without a decorator. Tests can still carry @pytest.mark.slow by hand.
_SLOW_CALLS = ('main(["train"', 'main(["run"', 'main(["sweep"', 'main(["eval"', 'main(["posthoc"', "main(['train'",
               "cli.main([\"train\"", "train(load_config", "train(cfg", "run_sweep(", "evaluate_run(", "_run_cli(")
_SLOW_FIXTURES = {"at_run", "trained_digits", "trained", "folders", "run_dir", "tiny_run"}


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        try:
            src = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            src = ""
        if any(c in src for c in _SLOW_CALLS) or _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
