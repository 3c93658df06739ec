import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("same_allocator", [False, True])
def test_bench_cli_writes_table_and_json(tmp_path, same_allocator):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "ltadv", "bench", "--model", "small_cnn", "--batch-size", "16",
                        "--rounds", "2", "--steps", "2", "--workers", "0", "--out", str(out)]
                       + (["--same-allocator"] if same_allocator else []),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reference img/s" in r.stdout and "training step" in r.stdout
    res = json.loads(out.read_text())
    for part in ("train", "pgd20_eval"):
        assert res[part]["reference_img_s"] > 0 and res[part]["ltadv_img_s"] > 0
        assert res[part]["speedup"] == pytest.approx(res[part]["ltadv_img_s"] / res[part]["reference_img_s"])
    # same attack on the same points: the two robust accuracies agree up to float rounding of the folded BN
    assert abs(res["pgd20_eval"]["reference_robust_acc"] - res["pgd20_eval"]["ltadv_robust_acc"]) <= 2 / 16
    # every round's seconds are kept; heap reuse goes to the baseline only with --same-allocator, and
    # only then can the rounds alternate (glibc's default cannot be restored once changed)
    assert len(res["train_seconds"]["reference"]) == len(res["train_seconds"]["ltadv"]) == 2
    if res["cpu_heap_reuse"]["ltadv"]:
        assert res["cpu_heap_reuse"]["reference"] is same_allocator
        assert res["interleaved"] is same_allocator
    assert res["flops_per_train_step"] > 0 and 0 < res["train_flops_fraction_of_peak"]["ltadv"] < 1.5
