import subprocess
import sys

import pytest

from ltadv.config import Config, ConfigError, load_config, replace


def test_defaults_are_the_reference_recipe():
    c = Config()
    assert c.attack.eps == pytest.approx(8 / 255) and c.attack.steps == 10
    assert c.optim.lr == 0.1 and c.optim.momentum == 0.9 and c.optim.weight_decay == 5e-4
    assert c.optim.batch_size == 128 and c.train.epochs == 100
    assert c.method.name == "at_bsl" and c.method.tau_b == 1.0


def test_preset_and_overrides_layer(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  name: digits-lt\nmethod:\n  tau_b: 1.5\n")
    c = load_config(f, {"train.epochs": 3, "attack.eps": "8/255"})
    assert c.model.name == "small_cnn"  # digits preset
    assert c.method.tau_b == 1.5  # YAML
    assert c.train.epochs == 3 and c.attack.eps == pytest.approx(8 / 255)  # CLI


@pytest.mark.parametrize("override,match", [
    ({"method.tau": 1.0}, "unknown config key 'method.tau'"),
    ({"optim.lr": "fast"}, "optim.lr: expected a number"),
    ({"train.epochs": 2.5}, "train.epochs: expected an integer"),
    ({"attack.eps": -0.1}, "attack.eps must be >= 0"),
    ({"data.imbalance_ratio": 0.5}, "data.imbalance_ratio must be >= 1"),
    ({"attack.steps": 0}, "attack.steps must be >= 1"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=override)


def test_yaml_unknown_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(f)


def test_replace_revalidates():
    c = load_config()
    assert replace(c, **{"method.name": "at"}).method.name == "at"
    with pytest.raises(ConfigError):
        replace(c, **{"attack.eps": -1.0})


def test_cli_config_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ltadv", "train", "--data", "digits-lt", "--method.tau", "2",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown config key 'method.tau'" in lines[0]
    assert not (tmp_path / "x").exists()
