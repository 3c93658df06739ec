"""`ltadv sweep --launcher slurm` through submitit: options, the sbatch script, and preemption.

The jobs run through submitit's LocalExecutor (`--launcher submitit-local`), the same CellJob a Slurm
array task runs; the sbatch script is checked through a fake `sbatch` on PATH that records it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from ltadv.cells import cell_command
from ltadv.cli import main
from ltadv.slurm import SlurmError, SlurmOptions, make_executor, parse_slurm_opts, parse_time
from ltadv.sweep import run_sweep

submitit = pytest.importorskip("submitit")

TINY_SWEEP = {
    "name": "tiny",
    "base": {"data.name": "digits-lt", "method.name": "at_bsl", "train.epochs": 1, "attack.steps": 2,
             "optim.batch_size": 128, "eval.n": 50, "eval.val_n": 30},
    "grid": {"method.tau_b": [0.0, 2.0]},
}


@pytest.fixture
def threads1(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs' training processes, on a shared 2-core machine


@pytest.mark.parametrize("text,minutes", [
    ("90", 90), ("1:30", 2), ("2:00:00", 120), ("1-12", 36 * 60), ("1-0:30", 1470), ("0-1:02:03", 63),
])
def test_parse_time_reads_sbatch_formats(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["abc", "1h", "0:59", "0", "1:2:3:4"])
def test_parse_time_rejects_bad_or_too_short(text):
    with pytest.raises(SlurmError):
        parse_time(text)


def test_parse_slurm_opts():
    assert parse_slurm_opts(["account=lab", "qos = high", "--constraint=a100|h100", "exclude=n1,n2"]) == {
        "account": "lab", "qos": "high", "constraint": "a100|h100", "exclude": "n1,n2"}
    for bad in (["account"], ["=x"], ["Bad Key=1"]):
        with pytest.raises(SlurmError):
            parse_slurm_opts(bad)


def test_sbatch_script_carries_every_option(tmp_path, monkeypatch):
    """A fake sbatch records the script submitit writes for a 3-cell array."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\ncp \"$@\" {tmp_path}/script.sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for srun to know it is on Slurm
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    opts = SlurmOptions(partition="gpu", gpus_per_job=2, cpus_per_job=8, mem_gb=32, time_min=parse_time("1-0:30"),
                        array_parallelism=2, extra=parse_slurm_opts(["account=lab", "qos=high", "mail-type=END"]))
    ex = make_executor(tmp_path / "jobs", opts, "ltadv-tiny")
    with ex.batch():
        jobs = [ex.submit(print, i) for i in range(3)]
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "script.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=1470", "#SBATCH --array=0-2%2", "#SBATCH --account=lab",
                 "#SBATCH --qos=high", "#SBATCH --mail-type=END", "#SBATCH --job-name=ltadv-tiny",
                 "#SBATCH --signal=USR2@"):
        assert line in script, line


def test_cell_command_resumes_a_checkpointed_cell_and_uses_torchrun_for_several_gpus(tmp_path):
    cfg, run = tmp_path / "c.yaml", tmp_path / "cell"
    first = cell_command(cfg, run)
    assert first[1:] == ["-m", "ltadv", "train", "--config", str(cfg), "--out", str(run), "--force", "--quiet"]
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    ddp = cell_command(cfg, run, quiet=False, gpus=4)
    assert ddp[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "ltadv", "train",
                       "--config", str(cfg), "--out", str(run), "--resume"]


@pytest.mark.parametrize("argv,message", [
    (["--partition", "gpu"], "--partition applies to --launcher slurm"),
    (["--launcher", "slurm", "--time", "1h"], "is not a Slurm time"),
    (["--launcher", "slurm", "--slurm-opt", "account"], "must be KEY=VALUE"),
    (["--launcher", "slurm", "--array-parallelism", "0"], "--array-parallelism must be >= 1"),
    (["--launcher", "slurm", "--partition", "gpu"], "needs a Slurm cluster here"),  # no sbatch on PATH
])
def test_bad_launcher_flags_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SWEEP))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_sweep_runs_through_submitit_local(tmp_path, threads1):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SWEEP))
    out = tmp_path / "sweep"
    lines: list[str] = []
    records = run_sweep(str(spec), out, log=lines.append, slurm=SlurmOptions(cluster="local", time_min=30))
    assert sorted(records) == ["tau_b=0.0", "tau_b=2.0"]
    assert all(r["status"] == "complete" for r in records.values())
    assert [r["config"]["method"]["tau_b"] for r in records.values()] == [0.0, 2.0]
    assert sum("submitted as job" in m for m in lines) == 2 and sum(": done (job" in m for m in lines) == 2
    assert (out / "summary.md").is_file() and (out / "report" / "methods.csv").is_file()
    # a second launch finds every cell complete and submits nothing
    lines.clear()
    run_sweep(str(spec), out, log=lines.append, report=False, slurm=SlurmOptions(cluster="local", time_min=30))
    assert not any("submitted" in m for m in lines) and sum("complete, skipped" in m for m in lines) == 2


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's process through /proc")
def test_preempted_cell_is_requeued_and_resumes_from_its_checkpoint(tmp_path, threads1):
    """submitit's preemption signal reaches the job mid-cell: the job stops the training, requeues, and
    the requeued job resumes after the last finished epoch instead of starting again."""
    epochs = 6
    spec = {**TINY_SWEEP, "base": {**TINY_SWEEP["base"], "train.epochs": epochs}, "grid": {"method.tau_b": [1.0]}}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    cell = out / "tau_b=1.0"
    result: dict = {}

    def sweep():
        try:
            result["records"] = run_sweep(str(path), out, log=lambda m: None, report=False,
                                          slurm=SlurmOptions(cluster="local", time_min=30))
        except Exception as e:  # handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=sweep)
    thread.start()

    def on_disk():
        try:
            return json.loads((cell / "result.json").read_text())
        except (OSError, ValueError):
            return {}

    deadline = time.time() + 300
    while len(on_disk().get("epochs") or []) < 1 and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    before = on_disk()["epochs"]
    training_pid = int((cell / ".ltadv.lock").read_text().split()[0])
    job_pid = _parent_pid(training_pid)  # the submitit task running CellJob
    os.kill(job_pid, signal.SIGUSR2)  # what Slurm sends before preempting or at the time limit
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    rec = result["records"]["tau_b=1.0"]
    assert rec["status"] == "complete" and [e["epoch"] for e in rec["epochs"]] == list(range(1, epochs + 1))
    assert len(before) < epochs, "the cell finished before the signal: nothing was preempted"
    # the epochs finished before the preemption are kept as they were (their timings included), not retrained
    assert rec["epochs"][: len(before)] == before
    logs = "".join(p.read_text() for p in (out / "_submitit").glob("*_log.out"))
    assert "--force" in logs and "--resume" in logs  # first start, then the requeued start
    assert "resuming" in logs


def test_docs_sweep_file_expands_to_its_24_valid_cells(tmp_path):
    """The CIFAR-10-LT sweep in docs/slurm.md: every cell's config resolves; relative_to names a cell."""
    from ltadv.config import load_config
    from ltadv.sweep import expand, load_spec

    text = (Path(__file__).parents[1] / "docs" / "slurm.md").read_text()
    path = tmp_path / "cifar10_lt.yaml"
    path.write_text(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = load_spec(str(path))
    cells = expand(spec)
    assert len(cells) == 24 and spec["relative_to"] in dict(cells)
    configs = [load_config(overrides=ov) for _, ov in cells]
    assert {(c.method.name, c.method.tau_b, c.data.aug) for c in configs} == {
        ("at", 1.0, ()), ("at", 1.0, ("ra",)), ("at_bsl", 0.5, ()), ("at_bsl", 1.0, ()), ("at_bsl", 1.5, ()),
        ("at_bsl", 0.5, ("ra",)), ("at_bsl", 1.0, ("ra",)), ("at_bsl", 1.5, ("ra",))}
    assert sorted({c.seed for c in configs}) == [0, 1, 2] and {c.data.name for c in configs} == {"cifar10-lt"}
