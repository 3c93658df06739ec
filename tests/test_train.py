import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import ltadv
from ltadv.config import load_config
from ltadv.train import RunDirError, train

FAST = {"data.name": "digits-lt", "train.epochs": 3, "train.progress": False, "attack.steps": 3}


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "at_bsl"
    train(load_config(overrides={**FAST, "method.name": "at_bsl"}), out, log=quiet)
    return out


def test_result_json_contract(run_dir):
    rec = json.loads((run_dir / "result.json").read_text())
    assert rec["config"]["method"]["name"] == "at_bsl"
    assert rec["class_counts"] == sorted(rec["class_counts"], reverse=True) and len(rec["class_counts"]) == 10
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2, 3]
    for e in rec["epochs"]:
        for k in ("train_loss", "train_seconds", "eval_seconds", "peak_mem_mb", "val_clean", "val_robust"):
            assert isinstance(e[k], float), k
        assert 0 <= e["val_robust"] <= e["val_clean"] <= 1
    for attack in ("clean", "pgd20"):
        m = rec["metrics"][attack]
        assert 0 <= m["overall"] <= 1 and len(m["per_class"]) == 10
        assert m["balanced"] == pytest.approx(sum(m["per_class"]) / 10)
        assert m["worst"] == min(m["per_class"])
    assert rec["metrics"]["pgd20"]["overall"] <= rec["metrics"]["clean"]["overall"]
    assert set(rec["metrics_by_checkpoint"]) == {"best", "last"}
    assert rec["best_epoch"] == 1 + max(range(3), key=lambda i: (rec["epochs"][i]["val_robust"], -i))


def test_load_model_matches_saved_weights(run_dir):
    model = ltadv.load_model(run_dir, "last")
    assert not model.training
    saved = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k])
    x = torch.rand(2, 1, 8, 8)
    assert model(x).shape == (2, 10)


def test_existing_run_dir_is_not_overwritten(run_dir):
    before = (run_dir / "result.json").read_bytes()
    with pytest.raises(RunDirError, match="already exists"):
        train(load_config(overrides={**FAST, "method.name": "at"}), run_dir, log=quiet)
    assert (run_dir / "result.json").read_bytes() == before


def test_resume_equals_uninterrupted(tmp_path):
    cfg = load_config(overrides={**FAST, "method.name": "at", "train.epochs": 3})
    train(cfg, tmp_path / "full", log=quiet)

    class Stop(Exception):
        pass

    def stop_after_two(msg):
        if msg.startswith("epoch   2/"):
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "cut", log=stop_after_two)
    train(cfg, tmp_path / "cut", resume=True, log=quiet)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "full" / "result.json").read_text())
    rb = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert ra["metrics"] == rb["metrics"]


def test_cli_unknown_method_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ltadv", "train", "--data", "digits-lt", "--method", "nope",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown method 'nope'" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_run_prints_table(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ltadv", "run", "--epochs", "2", "--quiet", "--attack.steps", "2",
                        "--out", str(tmp_path / "demo")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| at")]
    assert len(table) == 2 and table[0].startswith("| at ") and table[1].startswith("| at_bsl")
    assert "tail pgd20" in r.stdout
    for m in ("at", "at_bsl"):
        assert (tmp_path / "demo" / m / "result.json").is_file()
