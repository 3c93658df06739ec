"""``make gpu-check DEVICE=cpu``: the GPU check script end to end at tiny size (issue 21)."""

import json
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_gpu_check_cpu_path_end_to_end(tmp_path):
    out = tmp_path / "check"
    r = subprocess.run([sys.executable, "-m", "ltadv_bench.gpu_check", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert {k: v["status"] for k, v in s["steps"].items()} == {
        "tests": "ok", "bench-small_cnn": "ok", "protocol": "ok", "autoattack": "n/a", "bench-small_cnn-fast": "ok"}
    assert s["tests"]["tests"] >= 5 and s["tests"]["failures"] == s["tests"]["errors"] == 0
    plain, fast = s["bench"]["bench-small_cnn"], s["bench"]["bench-small_cnn-fast"]
    assert (plain["batch"], plain["ltadv_batch"], fast["ltadv_batch"]) == (16, 16, 32)
    for b in (plain, fast):
        assert b["reference_img_s"] > 0 and b["ltadv_img_s"] > 0
        assert 0 < b["fraction_of_peak"]["ltadv"] <= 1 and 0 < b["fraction_of_peak"]["reference"] <= 1
    # the protocol run: at-bsl-cifar10's recipe, 2 epochs, and the 100-epoch projection from its record
    rec = json.loads((out / "protocol" / "result.json").read_text())
    assert rec["protocol"] == "at-bsl-cifar10" and rec["config"]["data"]["aug"] == ["aua"]
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2]
    assert rec["epochs"][0]["val_robust"] is None and rec["epochs"][1]["val_robust"] is not None  # select_from 2
    p = s["protocol"]["protocol"]
    e2 = rec["epochs"][1]
    assert p["projected_100_epochs_s"] == pytest.approx(100 * e2["train_seconds"] + 26 * e2["eval_seconds"])
    assert s["autoattack"] is None and not (out / "autoattack.json").exists()  # not run on CPU
    md = (out / "summary.md").read_text()
    assert "projected 100 epochs" in md and "bench-small_cnn" not in md.split("| step |")[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_check_without_cuda_says_so_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ltadv_bench.gpu_check", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr
    assert not (tmp_path / "x").exists()
