"""ImageNet-LT from its split files, streamed from disk, on a tiny folder the tests write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ltadv.cli import main
from ltadv.config import ConfigError, load_config
from ltadv.data import DataError, ImageList, build_data, train_batches
from ltadv.data.imagenet_lt import read_split_file
from ltadv.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# class colours: a test image's label is checked against the colour decoded from its file
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 50, 230)]
TRAIN_COUNTS = [6, 3, 1]  # long-tailed, as the split file lists them


def _write_image(path, colour, size=(48, 40)):
    """A JPEG of ``colour`` with a horizontal ramp in the last channel (so crops differ)."""
    w, h = size
    x = np.zeros((h, w, 3), dtype=np.uint8)
    x[...] = colour
    x[..., 2] = np.clip(np.linspace(colour[2] - 30, colour[2] + 25, w), 0, 255).astype(np.uint8)[None, :]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(x).save(path, quality=95)


def write_imagenet_lt(root, val_per_class=2, test_per_class=2):
    """ImageNet-style folder (train/<wnid>/, val/<wnid>/) and the three OLTR split files."""
    wnids = ["n01440764", "n01443537", "n01484850"]
    lines = {"train": [], "val": [], "test": []}
    for c, wnid in enumerate(wnids):
        for i in range(TRAIN_COUNTS[c]):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            _write_image(root / rel, COLOURS[c], (48 + 4 * i, 40))
            lines["train"].append(f"{rel} {c}")
        for i in range(val_per_class):  # ImageNet-LT's val images come from ImageNet's training set
            rel = f"train/{wnid}/{wnid}_v{i}.JPEG"
            _write_image(root / rel, COLOURS[c])
            lines["val"].append(f"{rel} {c}")
        for i in range(test_per_class):
            rel = f"val/{wnid}/ILSVRC2012_val_{c}{i}.JPEG"
            _write_image(root / rel, COLOURS[c], (40, 52))
            lines["test"].append(f"{rel} {c}")
    names = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
    for split, name in names.items():
        (root / name).write_text("\n".join(lines[split]) + "\n")
    return root


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    return write_imagenet_lt(tmp_path_factory.mktemp("imagenet"))


def _data(root, **fields):
    over = {"data.name": "imagenet-lt", "data.root": str(root), "data.image_size": 16, "data.workers": 0}
    over.update({f"data.{k}": v for k, v in fields.items()})
    return build_data(load_config(overrides=over).data, seed=0)


def test_read_split_file_parses_and_names_bad_lines(tmp_path):
    f = tmp_path / "ImageNet_LT_train.txt"
    f.write_text("train/n1/a.JPEG 0\n\ntrain/n2/b c.JPEG 12\n")
    files, y = read_split_file(f)
    assert files == ["train/n1/a.JPEG", "train/n2/b c.JPEG"] and y.tolist() == [0, 12]
    f.write_text("train/n1/a.JPEG 0\ntrain/n1/b.JPEG x\n")
    with pytest.raises(DataError, match="line 2"):
        read_split_file(f)
    f.write_text("../../etc/passwd 0\n")
    with pytest.raises(DataError, match="inside the ImageNet folder"):
        read_split_file(f)


def test_splits_labels_and_class_counts(inet):
    d = _data(inet)
    assert d.class_counts == TRAIN_COUNTS and d.num_classes == 3
    assert len(d.y_val) == 6 and len(d.y_test) == 6
    assert sorted(d.y_test.tolist()) == [0, 0, 1, 1, 2, 2]
    assert d.y_train.tolist() == [0] * 6 + [1] * 3 + [2]  # the train file's order
    assert isinstance(d.x_test, ImageList) and tuple(d.x_test.shape) == (6, 3, 16, 16)
    assert d.image_size == 16 and d.in_channels == 3
    x = d.x_test.to("cpu")  # decoded: evaluation's resize + centre crop
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 16, 16)
    # each decoded test image has its label's colour (labels stay with their files through the fixed order)
    for img, label in zip(x, d.y_test.tolist()):
        red, green = img[0].float().mean().item(), img[1].float().mean().item()
        assert abs(red - COLOURS[label][0]) < 12 and abs(green - COLOURS[label][1]) < 12


def test_first_classes_only(inet):
    d = _data(inet, num_classes=2)
    assert d.class_counts == [6, 3] and set(d.y_test.tolist()) == {0, 1} and len(d.x_test) == 4


def test_lazy_slices_and_deterministic_eval_decoding(inet):
    d = _data(inet)
    part = d.x_test[torch.tensor([4, 1])]
    assert isinstance(part, ImageList) and len(part) == 2  # indexing does not decode
    full = d.x_test.to("cpu")
    assert torch.equal(part.to("cpu"), full[[4, 1]])
    assert torch.equal(d.x_test[:3].to("cpu"), full[:3])


def test_training_crops_are_seeded_and_independent_of_workers(inet):
    d = _data(inet)
    a, b = d.x_train.load(0, seed=1), d.x_train.load(0, seed=1)
    assert torch.equal(a, b)
    assert any(not torch.equal(a, d.x_train.load(0, seed=s)) for s in range(2, 8))
    order = torch.tensor([9, 3, 0, 7, 5, 8, 1])
    runs = []
    for workers in (0, 2):
        batches = list(train_batches(d.x_train, d.y_train, order, 6, 4, "cpu", workers=workers, seed=0, epoch=3))
        runs.append(batches)
    assert [len(y) for _, y in runs[0]] == [4, 2]  # stop=6 of 7, batches of 4
    assert runs[0][0][1].tolist() == [2, 0, 0, 1] and runs[0][1][1].tolist() == [0, 1]  # y_train of 9,3,0,7 | 5,8
    for (xa, ya), (xb, yb) in zip(*runs):
        assert xa.dtype == torch.uint8 and xa.shape[1:] == (3, 16, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = list(train_batches(d.x_train, d.y_train, order, 6, 4, "cpu", workers=0, seed=0, epoch=4))
    assert not torch.equal(other[0][0], runs[0][0][0])  # a new epoch draws new crops


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="missing ImageNet-LT split file"):
        _data(tmp_path)
    root = write_imagenet_lt(tmp_path / "broken")
    (root / "val" / "n01443537" / "ILSVRC2012_val_10.JPEG").unlink()
    with pytest.raises(DataError, match="ILSVRC2012_val_10.JPEG"):
        _data(root)


def test_split_files_in_their_own_folder(tmp_path):
    root = write_imagenet_lt(tmp_path / "imagenet")
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for f in root.glob("ImageNet_LT_*.txt"):
        f.rename(split_dir / f.name)
    with pytest.raises(DataError, match="missing ImageNet-LT split file"):
        _data(root)
    assert _data(root, split_dir=str(split_dir)).class_counts == TRAIN_COUNTS


def test_config_checks():
    with pytest.raises(ConfigError, match="imagenet-lt only"):
        load_config(overrides={"data.name": "cifar10-lt", "data.image_size": 64})
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(overrides={"data.name": "imagenet-lt", "data.workers": -1})
    cfg = load_config(overrides={"data.name": "imagenet-lt"})
    assert cfg.model.name == "resnet50" and cfg.data.image_size is None  # 224 at build time


def test_subset_fields_do_not_apply(inet):
    with pytest.raises(DataError, match="data.n_max does not apply"):
        _data(inet, n_max=3)


def _layer4_side(model, size):
    seen = {}

    def hook(_m, _i, o):
        seen["hw"] = o.shape[-1]

    model.body.layer4.register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    return out, seen["hw"]


def test_resnet50_is_torchvisions_and_the_small_stem_keeps_resolution():
    m = build_model("resnet50", 7, 3, (0.5,) * 3, (0.25,) * 3)
    body = sum(p.numel() for p in m.body.parameters())
    assert body == 23_508_032  # torchvision resnet50: 25,557,032 less its fc (2048 * 1000 + 1000)
    out, side = _layer4_side(m, 64)
    assert out.shape == (2, 7) and side == 2  # stride 32: 64 px leaves 2x2 maps
    s = build_model("resnet50_small", 7, 3, (0.5,) * 3, (0.25,) * 3)
    assert sum(p.numel() for p in s.body.parameters()) == 23_508_032 - 64 * 3 * (49 - 9)  # 3x3 first conv
    out, side = _layer4_side(s, 64)
    assert out.shape == (2, 7) and side == 4  # stride 16: 64 px gives 4x4 maps


@pytest.mark.slow
def test_cli_trains_one_epoch_streaming(inet, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--data", "imagenet-lt", "--data-root", str(inet), "--model", "resnet50_small",
               "--epochs", "1", "--out", str(out), "--quiet", "--data.image_size", "16", "--data.workers", "1",
               "--attack.steps", "1", "--optim.batch_size", "4", "--eval.batch_size", "8", "--train.device", "cpu",
               "--eval.attacks", "clean,pgd20", "--eval.select_on", "last", "--eval.checkpoints", "last"])
    assert rc == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["status"] == "complete" and rec["class_counts"] == TRAIN_COUNTS
    assert rec["model_meta"]["image_size"] == 16 and rec["model_meta"]["num_classes"] == 3
    assert rec["epochs"][0]["batches"] == 3  # 10 training images in batches of 4
    assert len(rec["metrics"]["pgd20"]["per_class"]) == 3 and rec["eval"]["n"] == 6
    assert not (out / "subset.npz").exists()  # the split file is the subset


def test_cli_bad_root_is_one_line(tmp_path, capsys):
    rc = main(["train", "--data", "imagenet-lt", "--data-root", str(tmp_path), "--epochs", "1",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "missing ImageNet-LT split file" in err and len(err.splitlines()) == 1


def test_docs_commands_resolve(capsys):
    """Every `ltadv run` command in docs/imagenet-lt.md resolves to a valid config (as `ltadv config`)."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "imagenet-lt.md").read_text().replace("\\\n", " ")
    commands = [line.split()[2:] for line in text.splitlines() if line.startswith("ltadv run ")]
    assert len(commands) == 3
    sizes = []
    for argv in commands:
        capsys.readouterr()
        assert main(["config", *argv]) == 0
        cfg = __import__("yaml").safe_load(capsys.readouterr().out)
        assert cfg["data"]["name"] == "imagenet-lt"
        sizes.append((cfg["data"]["image_size"], cfg["model"]["name"]))
    assert sizes == [(None, "resnet50"), (112, "resnet50"), (64, "resnet50_small")]
