"""Augmentation suite: each augmentation's documented effect, stacking order, soft targets end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ltadv import cli
from ltadv.attacks import ce_loss, pgd
from ltadv.config import load_config
from ltadv.data import AUGMENTATIONS, build_pipeline
from ltadv.data.augment import cutout
from ltadv.losses import balanced_softmax_loss, cross_entropy
from ltadv.methods import METHODS
from ltadv.models import build_model
from ltadv.sweep import expand, load_spec

MIXING = {"mixup", "cutmix"}
SHAPES = {"digits": (1, 8), "cifar": (3, 32)}  # channels, side
COUNTS = [50, 30, 20, 14, 10, 8, 6, 5, 5, 5]


def batch(shape: str, n: int = 32):
    c, s = SHAPES[shape]
    x = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8).float().div(255)
    y = torch.arange(n) % 10
    return x, y


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmentation_keeps_shape_and_range_and_changes_images(name, shape):
    x, y = batch(shape)
    step = AUGMENTATIONS[name](10, x.shape[-1])
    changed = False
    for _ in range(5):  # a single draw may be the identity (e.g. RandAugment's Identity twice)
        out, target = step(x.clone(), y)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        changed |= not torch.equal(out, x)
        if name in MIXING:
            assert target.shape == (len(y), 10)
            assert (target >= 0).all()
            torch.testing.assert_close(target.sum(1), torch.ones(len(y)))
        else:
            assert torch.equal(target, y)
    assert changed, f"{name} never changed a {shape} batch"


@pytest.mark.parametrize("name", sorted(MIXING))
def test_mixed_label_mass_matches_pixel_mass(name):
    # Image of class c is filled with the value v_c; after mixing, each image's mean pixel must be
    # sum_c target[c] * v_c: the label weights are exactly the share of each source image.
    v = torch.linspace(0.05, 0.95, 10)
    y = torch.randperm(10).repeat(2)
    x = v[y][:, None, None, None].expand(-1, 3, 32, 32).clone()
    step = AUGMENTATIONS[name](10, 32)
    for _ in range(5):
        out, target = step(x, y)
        torch.testing.assert_close(out.mean(dim=(1, 2, 3)), target @ v, atol=1e-5, rtol=0)


def test_mixing_steps_stack_on_soft_targets():
    x, y = batch("cifar")
    out, target = build_pipeline(("mixup", "cutmix", "ra"), True, 10, 32)(x, y)
    assert target.shape == (len(y), 10)
    torch.testing.assert_close(target.sum(1), torch.ones(len(y)))
    assert (target > 0).sum(1).max() <= 3  # at most three source images per output


def test_cutout_square_size_and_clipping():
    x = torch.ones(500, 1, 32, 32)
    erased = (cutout(x, 16) == 0).sum(dim=(1, 2, 3))
    assert erased.max() == 16 * 16  # a full square when the centre is away from the border
    assert erased.min() < 16 * 16  # clipped at the border (Cutout, unlike RandomErasing)
    assert erased.min() >= 8 * 8  # the centre is always inside the image
    out, _ = AUGMENTATIONS["cutout"](10, 8)(torch.ones(200, 1, 8, 8), torch.zeros(200, dtype=torch.long))
    assert (out == 0).sum(dim=(1, 2, 3)).max() == 4 * 4  # scaled: half the side


def test_stacking_applies_in_order(monkeypatch):
    calls = []

    def recorder(tag):
        def factory(num_classes, image_size, groups=16):
            def step(x, target):
                calls.append(tag)
                return x + 1, target

            return step

        return factory

    for tag in ("a", "b", "c"):
        monkeypatch.setitem(AUGMENTATIONS, f"rec_{tag}", recorder(tag))
    build_pipeline(("rec_c", "rec_a", "rec_b"), False, 10, 8)(torch.zeros(2, 1, 8, 8), torch.zeros(2))
    assert calls == ["c", "a", "b"]
    # A real order effect: cutout after mixup leaves exact zero squares in every image; the reverse
    # order mixes each zero square with the paired image's (positive) pixels.
    x = torch.rand(64, 3, 32, 32) * 0.9 + 0.1
    y = torch.arange(64) % 10
    out, _ = build_pipeline(("mixup", "cutout"), False, 10, 32)(x, y)
    assert ((out == 0).sum(dim=(1, 2, 3)) >= 8 * 8 * 3).all()


def test_grouped_draws_differ_within_a_batch():
    # One call of v2.RandAugment on a batch applies one op to every image; the grouped path must
    # give different images different ops. Identical copies of one image make this visible.
    x = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    y = torch.zeros(64, dtype=torch.long)
    for groups, distinct_min in ((1, 1), (16, 4)):
        out, _ = AUGMENTATIONS["ra"](10, 32, groups=groups)(x, y)
        distinct = len({tuple(img.flatten().tolist()) for img in out})
        assert distinct >= distinct_min
        if groups == 1:
            assert distinct == 1
    out, _ = AUGMENTATIONS["ta"](10, 32, groups=0)(x, y)  # 0: one draw per image
    assert len({tuple(img.flatten().tolist()) for img in out}) > 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmentations_run_on_cuda(name):
    x, y = batch("cifar", 64)
    out, target = build_pipeline((name,), True, 10, 32)(x.cuda(), y.cuda())
    assert out.device.type == "cuda" and target.device.type == "cuda"
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1


def test_auto_augment_family_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="1- or 3-channel"):
        AUGMENTATIONS["ra"](10, 8)(torch.rand(4, 2, 8, 8), torch.zeros(4, dtype=torch.long))


# ---- soft targets: losses, attacks and methods equal their hard-label versions on one-hot targets


def test_soft_target_losses_equal_hard_for_one_hot():
    logits, y = torch.randn(16, 10), torch.arange(16) % 10
    onehot = F.one_hot(y, 10).float()
    torch.testing.assert_close(cross_entropy(logits, onehot), cross_entropy(logits, y))
    torch.testing.assert_close(balanced_softmax_loss(logits, onehot, COUNTS, tau_b=1.5),
                               balanced_softmax_loss(logits, y, COUNTS, tau_b=1.5))
    torch.testing.assert_close(ce_loss(logits, onehot), ce_loss(logits, y))


def test_mixed_target_loss_is_the_mixup_criterion():
    # CE against lam e_a + (1 - lam) e_b == lam CE(y_a) + (1 - lam) CE(y_b) (Rice et al.'s mixup attack loss).
    logits = torch.randn(16, 10)
    ya, yb, lam = torch.arange(16) % 10, (torch.arange(16) + 3) % 10, 0.3
    soft = lam * F.one_hot(ya, 10).float() + (1 - lam) * F.one_hot(yb, 10).float()
    for fn in (cross_entropy, lambda z, t: balanced_softmax_loss(z, t, COUNTS)):
        torch.testing.assert_close(fn(logits, soft), lam * fn(logits, ya) + (1 - lam) * fn(logits, yb))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small_cnn", 10, 1, [0.5], [0.25]).eval()


def test_pgd_with_soft_targets(model):
    x, y = batch("digits", 16)
    onehot = F.one_hot(y, 10).float()
    torch.manual_seed(1)
    adv_hard = pgd(model, x, y, eps=0.1, alpha=0.025, steps=5)
    torch.manual_seed(1)
    adv_soft = pgd(model, x, onehot, eps=0.1, alpha=0.025, steps=5)
    torch.testing.assert_close(adv_soft, adv_hard)
    # The attack on a mixed target maximises the mixup criterion.
    yb, lam = (y + 3) % 10, 0.3
    soft = lam * onehot + (1 - lam) * F.one_hot(yb, 10).float()
    torch.manual_seed(2)
    adv_mixed = pgd(model, x, soft, eps=0.1, alpha=0.025, steps=5)
    torch.manual_seed(2)
    adv_crit = pgd(model, x, y, eps=0.1, alpha=0.025, steps=5,
                   loss_fn=lambda z, _: lam * ce_loss(z, y) + (1 - lam) * ce_loss(z, yb))
    torch.testing.assert_close(adv_mixed, adv_crit)
    assert not torch.equal(adv_mixed, adv_hard)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_accept_one_hot_targets(method, model):
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": method, "attack.steps": 3})
    m = METHODS[method](cfg, COUNTS)
    net = build_model("small_cnn", 10, 1, [0.5], [0.25], head=m.head)
    net.load_state_dict(model.state_dict(), strict=False)
    x, y = batch("digits", 16)
    onehot = F.one_hot(y, 10).float()
    net.eval()
    torch.manual_seed(3)
    adv_hard = m.perturb(net, x, y)
    torch.manual_seed(3)
    adv_soft = m.perturb(net, x, onehot)
    torch.testing.assert_close(adv_soft, adv_hard)
    net.train()
    torch.manual_seed(4)
    hard = m.loss(net, x, adv_hard, y)["loss"]
    torch.manual_seed(4)
    soft = m.loss(net, x, adv_hard, onehot)["loss"]
    torch.testing.assert_close(soft, hard)


# ---- CLI, training, preset


def test_unknown_augmentation_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", "digits-lt", "--aug", "ra,bogus", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"ltadv: error: unknown augmentation 'bogus'; choose one of: {', '.join(sorted(AUGMENTATIONS))}"]
    assert not out.exists()


@pytest.mark.slow
def test_train_with_stacked_augmentations_end_to_end(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", "digits-lt", "--aug", "ra,cutmix", "--epochs", "1", "--attack.steps", "2",
                   "--eval.n", "100", "--eval.checkpoints", "last", "--out", str(out), "--quiet"])
    assert rc == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["config"]["data"]["aug"] == ["ra", "cutmix"]
    assert rec["status"] == "complete" and len(rec["epochs"]) == 1
    assert rec["epochs"][0]["train_loss"] > 0
    assert 0 <= rec["metrics"]["pgd20"]["overall"] <= rec["metrics"]["clean"]["overall"] <= 1


def test_aug_stack_preset_cells():
    spec = load_spec("aug_stack")
    cells = dict(expand(spec))
    for overrides in cells.values():
        assert overrides["data.name"] == "digits-lt" and overrides["method.name"] == "at_bsl"
    augs = {name: load_config(overrides=ov).data.aug for name, ov in cells.items()}
    assert augs["none"] == ()
    singles = {a[0] for a in augs.values() if len(a) == 1}
    assert singles == set(AUGMENTATIONS)  # every augmentation alone
    stacks = [a for a in augs.values() if len(a) > 1]
    assert len(stacks) >= 3
    stacks.sort(key=len)
    for shorter, longer in zip(stacks, stacks[1:]):  # growing: each stack adds one to the previous
        assert len(longer) == len(shorter) + 1 and set(shorter) < set(longer)
        assert longer[-1] == "cutmix"  # mixing last, after the image-level ops
    assert set(stacks[0]) == {"ra", "cutmix"}


@pytest.mark.slow
def test_aug_stack_preset_runs_one_cell(tmp_path):
    import yaml

    from ltadv.sweep import run_sweep

    spec = load_spec("aug_stack")
    stack = max((ov for ov in dict(expand(spec)).values() if isinstance(ov.get("data.aug"), list | str)),
                key=lambda ov: len(load_config(overrides=ov).data.aug))
    one = {"name": "one", "base": spec["base"], "cells": {"longest": {"data.aug": stack["data.aug"]}}}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(one))
    records = run_sweep(str(path), tmp_path / "out", {"train.epochs": 1, "attack.steps": 2, "eval.n": 100,
                                                     "eval.checkpoints": ["last"]}, log=lambda *a: None)
    rec = records["longest"]
    assert rec["status"] == "complete" and len(rec["config"]["data"]["aug"]) >= 3
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "tail pgd20" in table and "longest" in table
