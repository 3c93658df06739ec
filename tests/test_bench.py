import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_cli_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "ltadv", "bench", "--model", "small_cnn", "--batch-size", "16",
                        "--rounds", "1", "--steps", "2", "--workers", "0", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reference img/s" in r.stdout and "training step" in r.stdout
    res = json.loads(out.read_text())
    for part in ("train", "pgd20_eval"):
        assert res[part]["reference_img_s"] > 0 and res[part]["ltadv_img_s"] > 0
        assert res[part]["speedup"] == pytest.approx(res[part]["ltadv_img_s"] / res[part]["reference_img_s"])
    # same attack on the same points: the two robust accuracies agree up to float rounding of the folded BN
    assert abs(res["pgd20_eval"]["reference_robust_acc"] - res["pgd20_eval"]["ltadv_robust_acc"]) <= 2 / 16
    assert res["flops_per_train_step"] > 0 and 0 < res["train_flops_fraction_of_peak"]["ltadv"] < 1.5
