"""RobustLT's class-wise wrapper (methods/robustlt.py): budgets by hand, the ramp, the attack, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from ltadv.cli import main
from ltadv.config import load_config
from ltadv.methods import METHODS
from ltadv.methods.robustlt import robustlt_eps, robustlt_intensity

pytestmark = pytest.mark.usefixtures("one_thread")

# counts (100, 50, 10): r = (0, sqrt(ln 2), sqrt(ln 10)) = (0, 0.8325546, 1.5174271); shares (0.625, 0.3125, 0.0625)
# give sum 0.3550125, so with alpha 0.3: tau = 0.8450406 and eps_c / eps = 0.7, 0.7 + 0.8450406 * 0.8325546 =
# 1.4035425, 0.7 + 0.8450406 * 1.5174271 = 1.9822876 (core/methods/robustlt.py: classwise_epsilon_max).
HAND = [0.7, 1.4035425, 1.9822876]


def test_classwise_budgets_match_hand_numbers():
    eps = robustlt_eps([100, 50, 10], 8 / 255, 0.3)
    assert [e / (8 / 255) for e in eps] == pytest.approx(HAND, abs=1e-6)
    # the sample-weighted mean budget is eps itself
    assert (0.625 * eps[0] + 0.3125 * eps[1] + 0.0625 * eps[2]) == pytest.approx(8 / 255)
    assert robustlt_eps([100, 50, 10], 0.1, 0.0) == pytest.approx([0.1] * 3)  # alpha 0: plain AT
    assert robustlt_eps([7, 7], 0.1, 0.3) == [0.1, 0.1]  # balanced data: every class eps


def test_ramp():
    """RobustLT: min((epoch - 1) / (beta * E), 1), 1-based; here 0-based epochs 0, 4, 8, 9 of 10 with beta 0.8."""
    assert [robustlt_intensity(e, 10, 0.8) for e in (0, 4, 8, 9)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert robustlt_intensity(0, 10, 0.0) == 1.0


def test_each_sample_stays_in_its_class_ball():
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": "at_bsl", "method.robustlt": True,
                                 "attack.eps": 0.1, "attack.steps": 5, "attack.init": "uniform"})
    method = METHODS["at_bsl"](cfg, [100, 50, 10])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, y = torch.rand(9, 1, 4, 4) * 0.5 + 0.25, torch.tensor([0, 1, 2] * 3)
    method.set_epoch(cfg.train.epochs - 1)  # ramp complete
    dist = (method.perturb(model, x, y) - x).flatten(1).abs().amax(1)
    budget = torch.tensor(HAND)[y] * 0.1
    assert (dist <= budget + 1e-6).all()
    assert torch.allclose(dist, budget, atol=1e-6)  # 5 steps of alpha_i = eps_i / 4 reach every boundary
    method.set_epoch(0)  # the ramp starts at 0: the first epoch trains on x
    assert torch.equal(method.perturb(model, x, y), x)


def test_one_epoch_from_the_cli(tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--data", "digits-lt", "--method", "at_bsl", "--method.robustlt", "true", "--epochs", "2",
                 "--quiet", "--attack.steps", "2", "--train.max_batches", "2", "--eval.attacks", "clean",
                 "--eval.val_n", "40", "--eval.n", "40", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("argv,message", [
    (["--method.robustlt_alpha", "1.5"], "method.robustlt_alpha must be in [0, 1]"),
    (["--method.robustlt_beta", "-1"], "method.robustlt_beta must be >= 0"),
    (["--method", "trades", "--method.robustlt", "true"], "attacks with its own loss"),
])
def test_bad_settings(argv, message, tmp_path, capsys):
    assert main(["train", "--data", "digits-lt", *argv, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
