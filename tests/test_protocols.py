"""Reference protocols: each resolves to its authors' script settings, draws their images, runs end to end.

The literals below are read from the authors' code (the file is named next to each group); a protocol
that drifts from them fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_cifar10, write_cifar100, write_tiny_imagenet
from ltadv.cli import main
from ltadv.config import ConfigError, load_config, protocol_differences, protocol_names
from ltadv.data import build_data
from ltadv.schedule import lr_at
from ltadv.train import train

# --- the authors' values, field by field -------------------------------------------------------------------

# NISPLab/AT-BSL train_at_bsl_cifar10.py (argparse defaults, adjust_learning_rate, main), at_bsl_loss.py,
# datasets/datasets.py (random_seed = 0, imb_type 'exp'), datasets/loader/build_loader.py (drop_last=True),
# pgd_attack.py (selection: PGD-20 on the test set from epoch 75, `rob > best_rob`).
AT_BSL_CIFAR10 = {
    "seed": 1, "data.name": "cifar10-lt", "data.imbalance_ratio": 50.0, "data.profile": "exp",
    "data.val_per_class": 0, "data.subset_draw": "ldam", "data.subset_seed": 0, "data.aug": ("aua",),
    "data.crop_flip": True, "data.drop_last": True, "data.sampler": "uniform", "model.name": "resnet18",
    "model.normalize": False, "method.name": "at_bsl", "method.tau_b": 1.0, "attack.eps": 8 / 255,
    "attack.alpha": 2 / 255, "attack.steps": 10, "attack.init": "normal", "optim.lr": 0.1, "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4, "optim.batch_size": 128, "optim.milestones": (75.0, 90.0, 100.0),
    "optim.milestone_unit": "epoch", "optim.lr_decay": 0.1, "optim.lr_schedule": "step", "train.epochs": 100,
    "train.amp": "off", "eval.select_on": "test", "eval.select_from": 75, "eval.select_ties": "first",
    "eval.val_attack": "pgd20", "eval.val_n": None,
}
# train_at_bsl_cifar100.py differs only in the dataset and imbalance_ratio=0.1.
AT_BSL_CIFAR100 = {**AT_BSL_CIFAR10, "data.name": "cifar100-lt", "data.imbalance_ratio": 10.0}
# train_at_bsl_tiny_imagenet.py: ti_preact_resnet, --aug default 'ra', datasets/tiny_imagenet.py
# (get_img_num_per_cls(200, 'exp', 0.1), np.random.seed(0)), a plain DataLoader (drop_last False).
AT_BSL_TINY = {**AT_BSL_CIFAR10, "data.name": "tiny-imagenet-lt", "data.imbalance_ratio": 10.0,
               "data.aug": ("ra",), "data.drop_last": False, "model.name": "preact_resnet18"}
# wutong16/Adversarial_Long-Tail configs/CIFAR10_LT/cifar10_LT0.02_pgdat_robal_R_train.yaml (and _eval),
# train.py (--seed 1, adjust_learning_rate multiplies the current lr), methods/train_modes.py add_reg_train
# (x + epsilon * torch.rand), datasets/loader/build_loader.py (drop_last=True).
ROBAL_R_CIFAR10 = {
    "seed": 1, "data.name": "cifar10-lt", "data.imbalance_ratio": 50.0, "data.val_per_class": 0,
    "data.subset_draw": "ldam", "data.subset_seed": 0, "data.aug": (), "data.crop_flip": True, "data.drop_last": True,
    "model.name": "wrn34_10", "model.normalize": False, "method.name": "robal", "method.tau_b": 1.5,
    "method.tau_m": 0.3, "method.m0": 0.1, "method.s": 10.0, "method.gamma": 0.03125, "method.beta": 6.0,
    "method.scale_in": "loss", "method.tau_p": 0.0, "attack.eps": 0.031, "attack.alpha": 0.0078, "attack.steps": 5,
    "attack.init": "uniform_plus", "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 0.0002,
    "optim.batch_size": 64, "optim.milestones": (60.0, 75.0), "optim.milestone_unit": "epoch",
    "optim.lr_schedule": "compound", "train.epochs": 80, "eval.eps": 0.031, "eval.select_on": "last",
    "eval.checkpoints": ("last",),
}
# ..._robal_N_train.yaml: tau_b 1.2, tau_m 0; ..._robal_N_eval.yaml: PostProc tau_p 0.1, scale 10.
ROBAL_N_CIFAR10 = {**ROBAL_R_CIFAR10, "method.tau_b": 1.2, "method.tau_m": 0.0, "method.tau_p": 0.1}
# configs/CIFAR100_LT/cifar100_LT0.1_pgdat_robal_R_train.yaml: m 0.3, tau_m 0, tau_b 0, gamma 0.0625, beta_reg 6;
# ..._R_eval.yaml: PostProc tau_p 1.7.
ROBAL_R_CIFAR100 = {**ROBAL_R_CIFAR10, "data.name": "cifar100-lt", "data.imbalance_ratio": 10.0, "method.m0": 0.3,
                    "method.tau_m": 0.0, "method.tau_b": 0.0, "method.gamma": 0.0625, "method.tau_p": 1.7}
# ..._robal_N_train.yaml: m 0.2, tau_m 0, tau_b 0, gamma 0.03125, beta_reg 3; ..._N_eval.yaml: tau_p 1.5.
ROBAL_N_CIFAR100 = {**ROBAL_R_CIFAR100, "method.m0": 0.2, "method.gamma": 0.03125, "method.beta": 3.0,
                    "method.tau_p": 1.5}
# yaodongyu/TRADES train_trades_cifar10.py: --epochs 76, --weight-decay 2e-4, --epsilon 0.031, --num-steps 10,
# --step-size 0.007, --beta 6.0, WideResNet(); trades.py: x + 0.001 randn.
TRADES = {"method.name": "trades", "method.beta": 6.0, "model.name": "wrn34_10", "train.epochs": 76,
          "optim.weight_decay": 2e-4, "optim.lr": 0.1, "optim.batch_size": 128, "attack.eps": 0.031,
          "attack.alpha": 0.007, "attack.steps": 10, "attack.init": "normal", "optim.milestones": (75.0, 90.0, 100.0),
          "seed": 1, "data.drop_last": False}
# YisenWang/MART train_resnet.py: --epochs 120, --weight-decay 3.5e-3, --lr 0.01, --beta 5.0, ResNet18().
MART = {"method.name": "mart", "method.beta": 5.0, "model.name": "resnet18", "train.epochs": 120,
        "optim.weight_decay": 3.5e-3, "optim.lr": 0.01, "attack.eps": 0.031, "attack.alpha": 0.007, "attack.steps": 10,
        "optim.milestones": (75.0, 90.0, 100.0), "seed": 1}
# GuanlinLee/REAT train.py: --epochs 80, -b 128, --lr 0.1, --wd 5e-4, MultiStepLR([60, 75]) stepped after
# each 0-based epoch, --seed 0, `>= best_eval_acc`; build_loader.py drop_last=False.
REAT = {"method.name": "reat", "model.name": "resnet18", "train.epochs": 80, "optim.batch_size": 128,
        "optim.lr": 0.1, "optim.weight_decay": 5e-4, "optim.milestones": (61.0, 76.0), "seed": 0,
        "eval.select_on": "test", "eval.select_ties": "last", "data.drop_last": False, "attack.init": "uniform"}

# RoBal's long-tail baselines (configs/CIFAR10_LT/cifar10_LT0.02_pgdat*.yaml): RoBal's recipe, FC classifier,
# train_mode pgd_at (methods/train_modes.py pgd_adv_train: x + epsilon * torch.rand).
ROBAL_BASE = {k: v for k, v in ROBAL_R_CIFAR10.items() if not k.startswith("method.")}
ROBAL_BASELINES = {
    # cifar10_LT0.02_pgdat.yaml
    "robal-at-cifar10": {**ROBAL_BASE, "method.name": "at", "method.outer_loss": "auto", "model.head": "linear"},
    # ..._outer_focal.yaml: focal gamma 2 (sigmoid), warmup_epochs 5; FC_Classifier(focal_init=True)
    "robal-focal-cifar10": {**ROBAL_BASE, "method.name": "at_focal_sigmoid", "method.outer_loss": "focal_sigmoid",
                            "method.focal_gamma": 2.0,
                            "optim.warmup_epochs": 5, "model.focal_bias_init": True},
    # ..._outer_CB.yaml: beta 0.9999, loss_type focal, gamma 2
    "robal-cb-cifar10": {**ROBAL_BASE, "method.name": "at_cb_focal_sigmoid", "method.outer_loss": "cb_focal_sigmoid",
                         "method.cb_beta": 0.9999,
                         "method.focal_gamma": 2.0},
    # ..._outer_LDAM.yaml: max_m 0.5, s 1, no re-weighting
    "robal-ldam-cifar10": {**ROBAL_BASE, "method.name": "at_ldam", "method.outer_loss": "ldam",
                           "method.ldam_max_m": 0.5,
                           "method.ldam_s": 1.0, "method.reweight": "none"},
    # ..._outer_CDT.yaml tau 0.3
    "robal-cdt-cifar10": {**ROBAL_BASE, "method.name": "at_cdt", "method.outer_loss": "cdt", "method.cdt_gamma": 0.3},
    # ..._outer_logitadjust.yaml
    "robal-la-cifar10": {**ROBAL_BASE, "method.name": "at_la", "method.outer_loss": "la", "method.la_tau": 1.0},
    # ..._rs-whole.yaml: epochs 25, lr_decline [15, 20], sampler ClassAware
    "robal-rs-cifar10": {**ROBAL_BASE, "method.name": "at_rs", "data.sampler": "balanced", "train.epochs": 25,
                         "optim.milestones": (15.0, 20.0)},
}

AUTHORS = {
    **ROBAL_BASELINES,
    "at-bsl-cifar10": AT_BSL_CIFAR10, "at-bsl-cifar100": AT_BSL_CIFAR100, "at-bsl-tiny": AT_BSL_TINY,
    "robal-r-cifar10": ROBAL_R_CIFAR10, "robal-n-cifar10": ROBAL_N_CIFAR10,
    "robal-r-cifar100": ROBAL_R_CIFAR100, "robal-n-cifar100": ROBAL_N_CIFAR100,
    "trades-cifar10": TRADES, "mart-cifar10": MART, "reat-cifar10": REAT,
}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_protocol_equals_the_authors_settings(name):
    cfg = load_config(overrides={"protocol": name})
    assert cfg.protocol == name
    for key, value in AUTHORS[name].items():
        got = _get(cfg, key)
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-12), key
        else:
            assert got == value, key
    assert protocol_differences(cfg) == {}


def test_every_shipped_protocol_is_checked_here():
    assert set(protocol_names()) == set(AUTHORS)


def test_unknown_protocol_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown protocol 'at-bsl'.*at-bsl-cifar10"):
        load_config(overrides={"protocol": "at-bsl"})


def test_flags_override_the_protocol_and_the_record_says_which():
    cfg = load_config(overrides={"protocol": "at-bsl-cifar10", "optim.lr": 0.05, "model.name": "small_cnn",
                                 "train.device": "cpu"})
    assert cfg.optim.lr == 0.05 and cfg.model.name == "small_cnn" and cfg.optim.milestones == (75, 90, 100)
    # train.device is left open by the protocol: not a difference
    assert protocol_differences(cfg) == {"model.name": {"protocol": "resnet18", "run": "small_cnn"},
                                         "optim.lr": {"protocol": 0.1, "run": 0.05}}


# --- schedule semantics ------------------------------------------------------------------------------------

def _lrs(cfg, epochs1):
    return [lr_at(cfg, e - 1) for e in epochs1]  # lr_at takes the 0-based epoch


def test_at_bsl_schedule_drops_at_the_authors_epochs():
    cfg = load_config(overrides={"protocol": "at-bsl-cifar10"})
    # train_at_bsl_cifar10.py: epoch >= 75 -> 0.01, >= 90 -> 0.001, >= 100 -> 1e-4 (1-based epochs)
    assert _lrs(cfg, [1, 74, 75, 89, 90, 99, 100]) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 1e-4])


def test_default_fraction_milestones_mean_the_same_epoch():
    cfg = load_config(overrides={"data.name": "digits-lt", "train.epochs": 100})
    assert cfg.optim.milestones == (0.75, 0.9)
    # 0.75 of 100 epochs is the AT-BSL script's `epoch >= 75` (before the fix the drop came at 76)
    assert _lrs(cfg, [74, 75, 89, 90]) == pytest.approx([0.1, 0.01, 0.01, 0.001])
    cfg30 = load_config(overrides={"data.name": "digits-lt", "train.epochs": 30})
    assert _lrs(cfg30, [22, 23, 26, 27]) == pytest.approx([0.1, 0.01, 0.01, 0.001])  # 22.5 -> 23, 27 -> 27


def test_robal_schedule_compounds_as_its_code():
    cfg = load_config(overrides={"protocol": "robal-r-cifar10"})
    # train.py adjust_learning_rate: decay = 0.1 ** (milestones reached); param_group['lr'] *= decay each epoch
    lr, expected = 0.1, []
    for epoch in range(1, 81):
        lr *= 0.1 ** sum(epoch >= m for m in (60, 75))
        expected.append(lr)
    assert _lrs(cfg, range(1, 81)) == pytest.approx(expected, rel=1e-9)
    assert _lrs(cfg, [59, 60, 61, 62]) == pytest.approx([0.1, 0.01, 0.001, 1e-4])
    step = load_config(overrides={"protocol": "robal-r-cifar10", "optim.lr_schedule": "step"})
    assert _lrs(step, [59, 60, 74, 75, 80]) == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])


def test_robal_warmup_compounds_as_its_code():
    cfg = load_config(overrides={"protocol": "robal-focal-cifar10"})
    # adjust_learning_rate(warmup_epochs=5): decay = (epoch + 1) / 5 while epoch < 5, lr *= decay each epoch
    assert _lrs(cfg, [1, 2, 3, 4, 5, 59, 60]) == pytest.approx([0.04, 0.024, 0.0192, 0.0192, 0.0192, 0.0192, 0.00192])
    step = load_config(overrides={"data.name": "digits-lt", "optim.warmup_epochs": 4, "train.epochs": 10})
    assert _lrs(step, [1, 2, 3, 4, 8, 9]) == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.01, 0.001])


def test_focal_bias_init_sets_the_prior_logit(tmp_path):
    cfg = load_config(overrides={**DIGITS, "train.epochs": 1, "optim.lr": 1e-12, "method.name": "at_focal_sigmoid",
                                 "model.focal_bias_init": True, "optim.weight_decay": 0.0})
    rec = train(cfg, tmp_path / "r", log=quiet)
    import ltadv

    bias = ltadv.load_model(tmp_path / "r", "last").head.bias
    n = torch.tensor(rec["class_counts"], dtype=torch.float32)
    prior = n / n.sum()
    assert torch.allclose(bias, torch.log(prior / (1 - prior)), atol=1e-5)  # unchanged at lr 1e-12


def test_training_attack_takes_its_first_gradient_at_the_unclipped_start():
    from ltadv.methods import METHODS

    cfg = load_config(overrides={"data.name": "digits-lt", "attack.steps": 1, "attack.init": "uniform_plus",
                                 "attack.clamp_start": False})
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.setdefault("x", x.detach().clone())
            return x.flatten(1)[:, :10] * torch.arange(1.0, 11.0)

    x = torch.ones(2, 1, 8, 8)  # every pixel at 1: a start in [x, x + eps) leaves the box unless clipped
    method = METHODS["at"](cfg, [10] * 10)
    x_adv = method.perturb(Probe(), x, torch.tensor([0, 1]))
    assert seen["x"].max() > 1.0 and x_adv.max() <= 1.0
    seen.clear()
    METHODS["at"](load_config(overrides={"data.name": "digits-lt", "attack.steps": 1, "attack.init": "uniform_plus"}),
                  [10] * 10).perturb(Probe(), x, torch.tensor([0, 1]))
    assert seen["x"].max() <= 1.0


def test_reat_schedule_is_multisteplr_after_each_epoch():
    cfg = load_config(overrides={"protocol": "reat-cifar10"})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 75], gamma=0.1)  # REAT train.py
    expected = []
    for _ in range(80):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert _lrs(cfg, range(1, 81)) == pytest.approx(expected)


def test_bad_schedule_values_are_errors():
    with pytest.raises(ConfigError, match="fractions"):
        load_config(overrides={"optim.milestones": [75]})
    with pytest.raises(ConfigError, match="1-based"):
        load_config(overrides={"optim.milestones": [0.5], "optim.milestone_unit": "epoch"})
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_config(overrides={"optim.lr_schedule": "cosine"})


# --- the subset draw ---------------------------------------------------------------------------------------

def _authors_draw(labels: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """datasets/datasets.py gen_imbalanced_data as the authors run it: the global legacy generator."""
    np.random.seed(0)
    out = []
    for the_class, the_img_num in zip(np.unique(labels), counts):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        out.append(idx[:the_img_num])
    return out


def test_ldam_draw_selects_the_authors_images(tmp_path):
    arrays = write_cifar10(tmp_path / "data", n_per_class_train=60, seed=3)
    # get_img_num_per_cls: img_max = len(data) / cls_num; int(img_max * imb_factor ** (i / (cls_num - 1.0)))
    counts = [int(60.0 * 0.02 ** (i / 9.0)) for i in range(10)]
    assert counts == [60, 38, 25, 16, 10, 6, 4, 2, 1, 1]
    expected = _authors_draw(arrays["ytr"], counts)
    data = build_data(load_config(overrides={"protocol": "at-bsl-cifar10", "data.root": str(tmp_path / "data"),
                                             "seed": 7}).data, seed=7)  # the training seed does not matter
    assert data.class_counts == counts
    assert np.array_equal(data.train_indices, np.concatenate(expected))
    assert np.array_equal(data.x_train.numpy(), arrays["xtr"].reshape(-1, 3, 32, 32)[np.concatenate(expected)])
    assert len(data.val_indices) == 0
    # ltadv's own draw picks other images from the same counts
    own = build_data(load_config(overrides={"protocol": "at-bsl-cifar10", "data.root": str(tmp_path / "data"),
                                            "data.subset_draw": "ltadv"}).data, seed=0)
    assert own.class_counts == counts and not np.array_equal(np.sort(own.train_indices),
                                                            np.sort(data.train_indices))


def test_subset_seed_is_separate_from_the_training_seed(tmp_path):
    write_cifar10(tmp_path / "data", n_per_class_train=20)
    base = {"data.name": "cifar10-lt", "data.root": str(tmp_path / "data"), "data.val_per_class": 2}
    a = build_data(load_config(overrides={**base, "data.subset_seed": 5}).data, seed=0)
    b = build_data(load_config(overrides={**base, "data.subset_seed": 5}).data, seed=1)
    c = build_data(load_config(overrides=base).data, seed=1)  # None: the training seed, as before
    d = build_data(load_config(overrides=base).data, seed=0)
    assert np.array_equal(a.train_indices, b.train_indices) and np.array_equal(a.val_indices, b.val_indices)
    assert not np.array_equal(c.train_indices, d.train_indices)


def test_subset_file_round_trip_and_robustlt_format(tmp_path, capsys):
    arrays = write_cifar10(tmp_path / "data", n_per_class_train=20)
    root = str(tmp_path / "data")
    f = tmp_path / "split.npz"
    assert main(["subset", str(f), "--data", "cifar10-lt", "--data-root", root, "--data.val_per_class", "2",
                 "--seed", "4"]) == 0
    drawn = build_data(load_config(overrides={"data.name": "cifar10-lt", "data.root": root,
                                              "data.val_per_class": 2}).data, seed=4)
    again = build_data(load_config(overrides={"data.name": "cifar10-lt", "data.root": root,
                                              "data.subset_file": str(f)}).data, seed=0)
    assert np.array_equal(again.train_indices, drawn.train_indices)
    assert again.class_counts == drawn.class_counts
    assert main(["subset", str(f), "--data", "cifar10-lt", "--data-root", root]) == 2  # no silent overwrite
    # RobustLT's core/data/split/*.npz: train_indices, val_indices (+ unsup_indices), positions in CIFAR's train set
    rlt = tmp_path / "cifar10-exp50-seed102.npz"
    train_idx = np.concatenate([np.flatnonzero(arrays["ytr"] == c)[: 10 - c] for c in range(10)])
    val_idx = np.flatnonzero(arrays["ytr"] == 0)[15:17]
    np.savez(rlt, train_indices=train_idx, val_indices=val_idx, unsup_indices=np.zeros(0))
    held = build_data(load_config(overrides={"data.name": "cifar10-lt", "data.root": root,
                                             "data.subset_file": str(rlt)}).data, seed=0)
    assert held.class_counts == [10 - c for c in range(10)] and np.array_equal(held.val_indices, val_idx)
    merged = build_data(load_config(overrides={"data.name": "cifar10-lt", "data.root": root, "data.subset_file":
                                               str(rlt), "data.subset_file_val": "train"}).data, seed=0)
    assert merged.class_counts[0] == 12 and len(merged.val_indices) == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_indices=np.array([0, 0, 1]))
    assert main(["subset", str(tmp_path / "x.npz"), "--data", "cifar10-lt", "--data-root", root,
                 "--data.subset_file", str(bad)]) == 2
    assert "repeats an index" in capsys.readouterr().err


# --- selection and the run record ---------------------------------------------------------------------------

DIGITS = {"data.name": "digits-lt", "attack.steps": 1, "train.epochs": 3, "eval.attacks": ["clean"],
          "train.progress": False, "optim.batch_size": 128}


def quiet(*_a, **_k):
    pass


def test_select_from_skips_the_early_epochs(tmp_path):
    rec = train(load_config(overrides={**DIGITS, "eval.select_from": 3}), tmp_path / "r", log=quiet)
    assert [e["val_robust"] is None for e in rec["epochs"]] == [True, True, False]
    assert rec["best_epoch"] == 3 and rec["selection"]["from_epoch"] == 3
    assert [e["eval_seconds"] < 1e-3 for e in rec["epochs"][:2]] == [True, True]  # no attack ran


def test_select_from_past_the_end_still_evaluates_the_last_epoch(tmp_path):
    rec = train(load_config(overrides={**DIGITS, "train.epochs": 2, "eval.select_from": 75}), tmp_path / "r", log=quiet)
    assert rec["epochs"][0]["val_robust"] is None and rec["epochs"][1]["val_robust"] is not None
    assert rec["best_epoch"] == 2


def test_select_last_evaluates_nothing_per_epoch(tmp_path):
    rec = train(load_config(overrides={**DIGITS, "eval.select_on": "last", "eval.checkpoints": ["last"]}),
                tmp_path / "r", log=quiet)
    assert all(e["val_robust"] is None for e in rec["epochs"]) and rec["best_epoch"] == 3
    assert rec["selection"]["n"] == 0 and set(rec["metrics_by_checkpoint"]) == {"last"}


def test_ties_rule():
    from ltadv.schedule import is_better

    first = load_config(overrides={"data.name": "digits-lt"})
    last = load_config(overrides={"data.name": "digits-lt", "eval.select_ties": "last"})
    assert not is_better(first, 0.5, 0.5) and is_better(last, 0.5, 0.5)
    assert is_better(first, 0.6, 0.5) and not is_better(last, 0.4, 0.5)


def test_drop_last_skips_the_short_batch(tmp_path):
    rec = train(load_config(overrides={**DIGITS, "train.epochs": 1, "optim.batch_size": 100, "data.drop_last": True}),
                tmp_path / "r", log=quiet)
    n = sum(rec["class_counts"])
    assert n % 100 != 0 and rec["epochs"][0]["batches"] == n // 100


def test_no_normalisation_layer_when_the_protocol_says_so(tmp_path):
    rec = train(load_config(overrides={**DIGITS, "train.epochs": 1, "model.normalize": False}), tmp_path / "r",
                log=quiet)
    assert rec["model_meta"]["mean"] == [0.0] and rec["model_meta"]["std"] == [1.0]


# --- every protocol runs end to end (shortened, on small folders the test writes) -----------------------------

SHORT = ["--epochs", "1", "--model", "small_cnn", "--attack.steps", "1", "--eval.attacks", "clean,pgd20",
         "--eval.n", "20", "--eval.val_n", "20", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol-data")
    write_cifar10(root, n_per_class_train=30, n_per_class_test=2)
    write_cifar100(root)
    write_tiny_imagenet(root)
    return root


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_every_protocol_runs_one_epoch_and_records_its_name(name, folders, tmp_path, monkeypatch):
    monkeypatch.setenv("LTADV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / name
    assert main(["train", "--protocol", name, "--data-root", str(folders), "--out", str(out), *SHORT]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["protocol"] == name and rec["config"]["protocol"] == name and rec["status"] == "complete"
    assert set(rec["protocol_differences"]) >= {"model.name", "train.epochs", "attack.steps"}
    with np.load(out / "subset.npz") as f:
        assert len(f["train_indices"]) == sum(rec["class_counts"])


def test_sweep_cells_take_a_protocol(folders, tmp_path, monkeypatch):
    import yaml

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "p", "base": {"protocol": "reat-cifar10", "data.root": str(folders), "train.epochs": 1,
                              "model.name": "small_cnn", "attack.steps": 1, "eval.attacks": ["clean"],
                              "eval.n": 10, "eval.val_n": 10},
        "cells": {"a": {"seed": 3}},
    }))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw")]) == 0
    rec = json.loads((tmp_path / "sw" / "a" / "result.json").read_text())
    assert rec["protocol"] == "reat-cifar10" and rec["config"]["seed"] == 3
    assert rec["protocol_differences"]["seed"] == {"protocol": 0, "run": 3}
    assert rec["config"]["optim"]["milestones"] == [61.0, 76.0]


def test_run_takes_the_protocols_method_and_data(folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--protocol", "at-bsl-cifar10", "--data-root", str(folders), "--out", str(out), *SHORT]) == 0
    rec = json.loads((out / "result.json").read_text())  # one method: the run folder is the run itself
    assert rec["config"]["method"]["name"] == "at_bsl" and rec["config"]["data"]["name"] == "cifar10-lt"


def test_protocols_command_lists_and_shows(capsys):
    assert main(["protocols"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith("use:")]
    assert [line.split()[0] for line in lines] == sorted(AUTHORS)
    assert all("arXiv" in line or "OpenReview" in line for line in lines)
    assert any("code: NISPLab/AT-BSL" in line for line in lines)
    assert main(["protocols", "robal-n-cifar10"]) == 0
    shown = capsys.readouterr().out
    assert "repository: wutong16/Adversarial_Long-Tail" in shown and "lr_schedule: compound" in shown
    assert main(["protocols", "robal"]) == 2
