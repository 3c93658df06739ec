"""TAET (methods/taet.py): HARL by hand, the two stages, the extra clean forward, one epoch from the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ltadv.cli import main
from ltadv.config import load_config
from ltadv.methods import METHODS
from ltadv.methods.taet import harl_loss

pytestmark = pytest.mark.usefixtures("one_thread")

# Three samples, three classes, class 2 absent from the batch. Per-sample CE: logits (0, 0, 0) -> ln 3 = 1.0986123;
# (ln 2, 0, 0) -> p_0 = 2/4, ln 2 = 0.6931472 (both class 0); (0, ln 3, 0) -> p_1 = 3/5, ln 5/3 = 0.5108256 (class 1).
# L = (0.8958797, 0.5108256, 0): mean 0.4689018, mean squared deviation 0.1346456, shares (0.6368650, 0.3631350, 0)
# with squares summing to 0.5374634. HARL.py weights 0.1 each: 0.1 * (0.4689018 + 0.1346456 + 0.5374634) = 0.1141011;
# weights (0.2, 0.5, 1.0): 0.0937804 + 0.0673228 + 0.5374634 = 0.6985666.
LOGITS = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [0.0, math.log(3), 0.0]])
TARGET = torch.tensor([0, 0, 1])


def test_harl_matches_hand_numbers():
    assert harl_loss(LOGITS, TARGET).item() == pytest.approx(0.1141011, abs=1e-6)
    assert harl_loss(LOGITS, TARGET, 0.2, 0.5, 1.0).item() == pytest.approx(0.6985666, abs=1e-6)
    # soft one-hot targets give the same number
    assert harl_loss(LOGITS, torch.eye(3)[TARGET]).item() == pytest.approx(0.1141011, abs=1e-6)


def test_harl_weights_each_class_equally_not_each_sample():
    """Doubling class 0's samples (same losses) leaves the class means, so HARL, unchanged; mean CE moves."""
    more = torch.cat([LOGITS, LOGITS[:2]])
    assert harl_loss(more, torch.tensor([0, 0, 1, 0, 0])).item() == pytest.approx(0.1141011, abs=1e-6)


def make(ce_epochs: int):
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": "taet", "method.taet_ce_epochs": ce_epochs,
                                 "attack.steps": 3})
    return METHODS["taet"](cfg, [30, 20, 10])


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(x.flatten(1)))


def test_clean_stage_then_harl_stage():
    model = Tiny()
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 0])
    method = make(ce_epochs=2)
    method.set_epoch(1)  # 0-based epoch 1 < 2: the notebook's `if epoch < 40` branch
    model.eval()
    assert torch.equal(method.perturb(model, x, y), x)  # no attack in stage 1
    model.train()
    out = method.loss(model, x, x, y)
    assert out["loss"].item() == pytest.approx(torch.nn.functional.cross_entropy(out["logits"], y).item(), rel=1e-6)
    method.set_epoch(2)
    model.eval()
    x_adv = method.perturb(model, x, y)
    assert not torch.equal(x_adv, x) and (x_adv - x).abs().max() <= method.eps + 1e-6
    model.train()
    out = method.loss(model, x, x_adv, y)
    assert out["loss"].item() == pytest.approx(harl_loss(out["logits"], y).item(), rel=1e-6)


def test_the_notebooks_extra_clean_forward_moves_bn_twice_per_step():
    """Two train-mode forwards of the clean batch (the unused one, then the loss's): running mean
    0 -> 0.1 mu -> 0.19 mu with BN momentum 0.1."""
    model = Tiny().train()
    x, y = torch.rand(5, 1, 2, 2) + 1.0, torch.tensor([0, 1, 2, 0, 1])
    mu = x.flatten(1).mean(0)
    make(ce_epochs=5).loss(model, x, x, y)
    assert torch.allclose(model.bn.running_mean, 0.19 * mu, atol=1e-6)


@pytest.mark.parametrize("ce_epochs", ["0", "1"])
def test_one_epoch_from_the_cli(ce_epochs, tmp_path):
    out = tmp_path / "taet"
    assert main(["train", "--data", "digits-lt", "--method", "taet", "--epochs", "1", "--quiet",
                 "--method.taet_ce_epochs", ce_epochs, "--attack.steps", "2", "--train.max_batches", "3",
                 "--eval.attacks", "clean", "--eval.val_n", "40", "--eval.n", "40", "--out", str(out)]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["status"] == "complete" and math.isfinite(rec["epochs"][0]["train_loss"])
    # stage 1 runs no attack: 2 forward passes per batch (clean twice); stage 2 adds the 2 attack steps
    assert rec["epochs"][0]["forward_passes"] == 3 * (2 if ce_epochs == "1" else 4)


def test_bad_taet_settings(tmp_path, capsys):
    assert main(["train", "--data", "digits-lt", "--method", "taet", "--method.taet_gamma", "-1",
                 "--out", str(tmp_path / "r")]) == 2
    assert "method.taet_gamma must be >= 0" in capsys.readouterr().err
