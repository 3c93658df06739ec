"""Dataset readers: the user's local copies of CIFAR-10/100 and Tiny-ImageNet, and scikit-learn's digits.

Every reader returns ``(x_train, y_train, x_test, y_test)`` with x as uint8 N x C x H x W numpy arrays
and y as int64. Nothing is downloaded: a missing or corrupt folder raises :class:`DataError`.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np

from ..registry import register

READERS: dict = {}


class DataError(ValueError):
    """The dataset folder is missing, incomplete or corrupt; the message names the path."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python format that admits only the numpy types the format uses.

    The CIFAR batches are pickles of dicts holding bytes, lists, ints and numpy arrays; anything
    else (a hostile file naming os.system, say) is refused before it can run.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"corrupt dataset file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"corrupt dataset file {path}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find_folder(root: str | None, folder: str, dataset: str) -> Path:
    if root is None:
        raise DataError(f"{dataset} needs --data-root pointing at the folder that holds {folder}/ "
                        f"(no download is attempted)")
    r = Path(root).expanduser()
    for cand in (r / folder, r):
        if cand.is_dir() and cand.name == folder:
            return cand
    if (r / folder).is_dir():
        return r / folder
    if not r.exists():
        raise DataError(f"data folder not found: {r}")
    raise DataError(f"data folder {r} does not contain {folder}/ ({dataset} in its standard layout)")


def as_pixels(x, path: Path) -> np.ndarray:
    """``x`` as uint8 pixels; values outside 0..255 (or not whole numbers) are an error, never wrapped."""
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise DataError(f"corrupt dataset file {path}: pixel data is not an array ({e})") from None
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iuf" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
        raise DataError(f"corrupt dataset file {path}: pixel data of type {x.dtype} (expected uint8 0..255)")
    if x.size and (x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x))):
        raise DataError(f"corrupt dataset file {path}: pixel values from {x.min()} to {x.max()}, expected "
                        f"whole numbers 0..255")
    return x.astype(np.uint8)


def as_labels(y, path: Path, num_classes: int) -> np.ndarray:
    """``y`` as int64 labels in 0..num_classes-1; anything else names the file and the value."""
    try:
        y = np.asarray(y)
    except (ValueError, TypeError) as e:
        raise DataError(f"corrupt dataset file {path}: labels are not a list of integers ({e})") from None
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"corrupt dataset file {path}: labels must be a flat list of integers, got {y.dtype} "
                        f"shaped {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"corrupt dataset file {path}: labels from {y.min()} to {y.max()}, expected 0.."
                        f"{num_classes - 1}")
    return y.astype(np.int64)


def _cifar_batches(folder: Path, files: list[str], label_key: str,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"missing dataset file {path}")
        d = safe_unpickle(path)
        if "data" not in d or label_key not in d:
            raise DataError(f"corrupt dataset file {path}: no 'data' / '{label_key}' entries")
        x = as_pixels(d["data"], path)
        y = as_labels(d[label_key], path, num_classes)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise DataError(f"corrupt dataset file {path}: data shape {x.shape}, {len(y)} labels")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


@register(READERS, "cifar10-lt")
def read_cifar10(root: str | None):
    folder = _find_folder(root, "cifar-10-batches-py", "CIFAR-10")
    xtr, ytr = _cifar_batches(folder, [f"data_batch_{i}" for i in range(1, 6)], "labels", 10)
    xte, yte = _cifar_batches(folder, ["test_batch"], "labels", 10)
    return xtr, ytr, xte, yte


@register(READERS, "cifar100-lt")
def read_cifar100(root: str | None):
    folder = _find_folder(root, "cifar-100-python", "CIFAR-100")
    xtr, ytr = _cifar_batches(folder, ["train"], "fine_labels", 100)
    xte, yte = _cifar_batches(folder, ["test"], "fine_labels", 100)
    return xtr, ytr, xte, yte


def _cache_dir() -> Path:
    return Path(os.environ.get("LTADV_CACHE", Path.home() / ".cache" / "ltadv"))


TINY_SIZE = 64


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            x = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"corrupt image {path}: {e}") from None
    if x.shape[1:] != (TINY_SIZE, TINY_SIZE):
        raise DataError(f"image {path} is {x.shape[2]}x{x.shape[1]}, Tiny-ImageNet images are "
                        f"{TINY_SIZE}x{TINY_SIZE}")
    return x


def _listing_key(folder: Path, files: list[Path]) -> str:
    """Cache key: the folder and every image's name, size and modification time (so a changed,
    added or removed image makes a new cache instead of silently reusing the old arrays)."""
    h = hashlib.sha256(str(folder.resolve()).encode())
    for p in files:
        try:
            st = p.stat()
        except OSError as e:
            raise DataError(f"cannot read dataset file {p}: {e.strerror}") from None
        h.update(f"\0{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cache_fits(arrays, n_train: int, n_test: int, num_classes: int) -> bool:
    """The cached arrays have the listing's sizes, uint8 64x64 RGB images and labels in range."""
    xtr, ytr, xte, yte = arrays
    shape = (3, TINY_SIZE, TINY_SIZE)
    return (xtr.dtype == np.uint8 and xte.dtype == np.uint8 and xtr.shape == (n_train, *shape)
            and xte.shape == (n_test, *shape) and ytr.shape == (n_train,) and yte.shape == (n_test,)
            and ytr.dtype.kind in "iu" and yte.dtype.kind in "iu"
            and int(min(ytr.min(), yte.min())) >= 0 and int(max(ytr.max(), yte.max())) < num_classes)


@register(READERS, "tiny-imagenet-lt")
def read_tiny_imagenet(root: str | None):
    """Tiny-ImageNet-200 in its standard layout: wnids.txt, train/<wnid>/images/*.JPEG,
    val/images/*.JPEG with val/val_annotations.txt (the labelled val set serves as the test set).

    Decoding 110k JPEGs takes minutes, so the arrays are cached as .npz under $LTADV_CACHE
    (default ~/.cache/ltadv), keyed by the folder's path and every file's name, size and mtime.
    """
    folder = _find_folder(root, "tiny-imagenet-200", "Tiny-ImageNet")
    wnids_file = folder / "wnids.txt"
    ann_file = folder / "val" / "val_annotations.txt"
    for f in (wnids_file, ann_file):
        if not f.is_file():
            raise DataError(f"missing dataset file {f}")
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    train_files = []
    for w in wnids:
        d = folder / "train" / w / "images"
        if not d.is_dir():
            raise DataError(f"missing dataset folder {d}")
        train_files += [(p, index[w]) for p in sorted(d.iterdir()) if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    test_files = []
    for line in ann_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"corrupt {ann_file}: unknown class {parts[1]!r}")
        test_files.append((folder / "val" / "images" / parts[0], index[parts[1]]))
    if not train_files or not test_files:
        where = folder / "train" if not train_files else ann_file
        raise DataError(f"no {'training' if not train_files else 'test'} images listed under {where}")
    key = _listing_key(folder, [p for p, _ in train_files] + [p for p, _ in test_files] + [wnids_file, ann_file])
    cache = _cache_dir() / f"tiny-imagenet-{key}.npz"
    if cache.is_file():
        try:
            z = np.load(cache)
            arrays = z["xtr"], z["ytr"], z["xte"], z["yte"]
            if _cache_fits(arrays, len(train_files), len(test_files), len(wnids)):
                return arrays
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a broken or edited cache is rebuilt below
    xtr = np.stack([_read_image(p) for p, _ in train_files])
    ytr = np.array([c for _, c in train_files], dtype=np.int64)
    xte = np.stack([_read_image(p) for p, _ in test_files])
    yte = np.array([c for _, c in test_files], dtype=np.int64)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
        os.replace(tmp, cache)
    except OSError:
        pass  # caching is an optimisation only
    return xtr, ytr, xte, yte


DIGITS_TEST_PER_CLASS = 50


@register(READERS, "digits-lt")
def read_digits(root: str | None = None):
    """scikit-learn's bundled 8x8 digits (1,797 images, 0..16 grey levels), scaled to uint8.

    A fixed balanced test split of 50 images per class, drawn with seed 0 whatever the run's seed.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images.astype(np.float64) / 16.0 * 255.0).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, DIGITS_TEST_PER_CLASS, replace=False)] = True
    return x[~test], y[~test], x[test], y[test]


# Per-channel normalisation constants, the models' first layer (pixels stay in [0, 1] outside).
STATS = {
    "cifar10-lt": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100-lt": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet-lt": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "digits-lt": ((0.3,), (0.4,)),
}
