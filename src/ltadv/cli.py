"""Command line: ``ltadv train | eval | run | sweep | report``. Choices come from the registries.

Any config field can be set as a dotted override after the named flags, e.g.
``ltadv train --data cifar10-lt --method.tau_b 1.5 --optim.batch_size 256``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, load_config
from .report import format_table

# Named flag -> dotted config key (SPEC section 7).
FLAG_KEYS = {
    "data": "data.name",
    "data_root": "data.root",
    "imbalance_ratio": "data.imbalance_ratio",
    "model": "model.name",
    "method": "method.name",
    "aug": "data.aug",
    "epochs": "train.epochs",
    "eps": "attack.eps",
    "seed": "seed",
    "device": "train.device",
    "protocol": "protocol",
}


class CLIError(ValueError):
    pass


def _registries():
    from .catalog import registries

    return registries()


def _add_run_flags(p: argparse.ArgumentParser, multi_method: bool = False) -> None:
    reg = _registries()
    g = p.add_argument_group("run configuration (any other field: --section.key VALUE)")
    g.add_argument("--config", metavar="FILE", help="YAML file with differences from the defaults")
    g.add_argument("--protocol", metavar="NAME",
                   help="start from a paper's exact recipe (`ltadv protocols` lists them); other flags override "
                        "single fields and the run record lists those under protocol_differences")
    g.add_argument("--data", metavar="NAME", help=f"dataset: {', '.join(sorted(reg['data']))}")
    g.add_argument("--data-root", metavar="DIR", help="folder holding the local copy of the dataset")
    g.add_argument("--imbalance-ratio", metavar="R", type=float, help="IR = n_max / n_min (>= 1)")
    g.add_argument("--model", metavar="NAME", help=f"model: {', '.join(sorted(reg['model']))}")
    help_m = f"method: {', '.join(sorted(reg['method']))} (`ltadv list` says what each is)"
    g.add_argument("--method", metavar="NAME" + ("[,NAME...]" if multi_method else ""),
                   help=help_m + (" (comma-separated to compare several; default at,at_bsl)" if multi_method else ""))
    g.add_argument("--aug", metavar="LIST", help=f"augmentations in order, comma-separated: "
                   f"{', '.join(sorted(reg['aug'])) or '(none registered)'}")
    g.add_argument("--epochs", metavar="N", type=int)
    g.add_argument("--eps", metavar="X", help="attack radius in pixel units, e.g. 8/255 or 0.031 (L-inf; an L2 "
                                          "radius such as 0.5 with --attack.norm l2)")
    g.add_argument("--seed", metavar="N", type=int)
    g.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<time>-<data>-<method>)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or --out) from its last checkpoint")
    g.add_argument("--force", action="store_true",
                   help="start again in an existing run folder, deleting only what ltadv made there "
                        "(record, checkpoints, eval state)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_overrides(extra: list[str]) -> dict[str, Any]:
    """``--a.b VALUE`` / ``--a.b=VALUE`` pairs -> {"a.b": value} (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or "." not in tok.split("=", 1)[0]:
            raise CLIError(f"unrecognized argument {tok!r} (config fields are set as --section.key VALUE)")
        if "=" in tok:
            key, raw = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise CLIError(f"{tok} needs a value")
            key, raw = tok[2:], extra[i + 1]
            i += 2
        key = key.replace("-", "_")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out[key] = raw if isinstance(value, (dict, type(None))) and raw not in ("null", "~", "none", "None") \
            else (None if raw in ("null", "~", "none", "None") else value)
    return out


def _reject_extra(extra: list[str]) -> None:
    """Commands without config overrides take no extra arguments."""
    if extra:
        raise CLIError(f"unrecognized argument {extra[0]!r}")


def _config_from_args(args, extra: list[str], method: str | None = None) -> Config:
    overrides = _parse_overrides(extra)
    for flag, key in FLAG_KEYS.items():
        v = getattr(args, flag, None)
        if v is not None:
            overrides[key] = v
    if method is not None:
        overrides["method.name"] = method
    if args.quiet:
        overrides["train.progress"] = False
    return load_config(args.config, overrides)


def _given_settings(args, extra: list[str]) -> dict[str, Any]:
    """The config fields this command line sets explicitly (--config file, flags, dotted overrides)."""
    from .config import read_yaml

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    given = flat(read_yaml(args.config)) if args.config else {}
    given.update(_parse_overrides(extra))
    given.update({key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag, None) is not None})
    return given


def _resume_config(out: Path, args, extra: list[str]) -> Config:
    """The saved run's config with this command line's settings applied on top. ``train`` refuses the
    ones that would change the training (a resumed run is the same run); with nothing saved, the
    command line's own config starts the run."""
    from .checkpoint import STATE_KEYS, load_state
    from .config import from_dict, replace
    from .results import read_record

    given = _given_settings(args, extra)
    if (out / "result.json").is_file():
        saved = read_record(out)["config"]
    elif (out / "checkpoints" / "last.pt").is_file():
        saved = load_state(out / "checkpoints" / "last.pt", required=STATE_KEYS)["config"]
    elif given:
        return _config_from_args(args, extra)
    else:
        raise CLIError(f"nothing to resume in {out}: no result.json or checkpoints/last.pt there")
    if args.quiet:
        given["train.progress"] = False
    return replace(from_dict(saved), **given)


def _resume_dir(args) -> tuple[Path | None, bool]:
    if isinstance(args.resume, str):
        if args.out and Path(args.out) != Path(args.resume):
            raise CLIError("--resume RUN_DIR and --out name different folders")
        return Path(args.resume), True
    return (Path(args.out) if args.out else None), bool(args.resume)


def _default_out(cfg: Config, suffix: str | None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{cfg.data.name}" + (f"-{suffix}" if suffix else "")
    return Path("runs") / name


def cmd_train(args, extra) -> int:
    from .train import train

    out, resume = _resume_dir(args)
    if resume and out is None:
        raise CLIError("--resume needs the run folder: --resume RUN_DIR")
    cfg = _resume_config(out, args, extra) if resume else _config_from_args(args, extra)
    out = out or _default_out(cfg, cfg.method.name)
    record = train(cfg, out, resume=resume, force=args.force)
    print(format_table({cfg.method.name: record}))
    print(f"run record: {out / 'result.json'}")
    return 0


def cmd_run(args, extra) -> int:
    from .train import train

    methods = [m for m in (args.method or "").split(",") if m]
    if not methods:
        base = _config_from_args(args, extra)
        user_set_method = args.config and "method" in (yaml.safe_load(Path(args.config).read_text()) or {})
        methods = [base.method.name] if user_set_method or args.protocol or any(
            k.startswith("method.name") for k in _parse_overrides(extra)) else ["at", "at_bsl"]
    cfgs = {m: _config_from_args(args, extra, method=m) for m in methods}
    out, resume = _resume_dir(args)
    first = next(iter(cfgs.values()))
    out = out or _default_out(first, None if len(methods) > 1 else methods[0])
    records = {}
    for m, cfg in cfgs.items():
        run_dir = out / m if len(methods) > 1 else out
        print(f"== {m}: training {cfg.model.name} on {cfg.data.name} (IR {cfg.data.imbalance_ratio:g}, "
              f"eps {cfg.attack.eps:.4g}, {cfg.train.epochs} epochs) -> {run_dir}")
        records[m] = train(cfg, run_dir, resume=resume, force=args.force)
    print()
    print(format_table(records))
    print(f"\nrun records under {out}")
    return 0


def cmd_eval(args, extra) -> int:
    from .run_eval import evaluate_run

    _reject_extra(extra)
    attacks = [a for a in args.attacks.split(",") if a]
    which = [w for w in args.which.split(",") if w]
    for w in which:
        if w not in ("best", "last", "ema_best", "ema_last"):
            raise CLIError(f"--which takes best, last, ema_best and/or ema_last, got {w!r}")
    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    eps = None
    if args.eps is not None:
        from .config import _parse_number

        try:
            eps = _parse_number(args.eps)
        except ValueError:
            raise CLIError(f"--eps must be a number such as 8/255 or 0.031, got {args.eps!r}") from None
        if not (eps >= 0 and eps < float("inf")):
            raise CLIError(f"--eps must be a finite number >= 0, got {args.eps!r}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    progress = True if args.progress else (False if args.quiet else None)
    if args.norm is not None and args.norm not in ("linf", "l2"):
        raise CLIError(f"--norm must be linf or l2, got {args.norm!r}")
    record = evaluate_run(args.run_dir, attacks, checkpoints=which, n=args.n, device=args.device,
                          sweep_eps=args.eps_sweep, eps=eps, batch_size=args.batch_size, progress=progress,
                          norm=args.norm)
    name = record["config"]["method"]["name"]
    from .report import format_attack_table

    for w, key in zip(which, record["last_evaluation"]):
        entry = record["evaluations"][key]
        print(f"-- {w} checkpoint" + (f" (epoch {record.get('best_epoch')})" if w == "best" else "")
              + f", {entry['n']} test images, eps {entry['eps']:.4g}"
              + (f" ({entry['norm']})" if entry.get("norm", "linf") != "linf" else "")
              + ("" if entry["headline"] else " (its own entry in the record; the run's headline numbers are kept)"))
        print(format_table({name: {**record, "metrics": entry["metrics"]}}))
        print(format_attack_table(entry["metrics"], (record.get("eval_seconds") or {}).get(w)
                                  if entry["headline"] else None))
        for warning in entry.get("sanity", []):
            print(f"warning: {warning}")
    return 0


def cmd_sweep(args, extra) -> int:
    from .sweep import run_sweep

    overrides = _parse_overrides(extra)
    run_sweep(args.spec, args.out, overrides, quiet=True, slurm=_slurm_options(args))
    return 0


def _slurm_options(args):
    """The sweep's --launcher and Slurm flags as :class:`ltadv.slurm.SlurmOptions` (None: local launcher)."""
    from .slurm import SlurmOptions, parse_slurm_opts, parse_time

    slurm_only = [f for f, v in (("--partition", args.partition), ("--time", args.time),
                                 ("--array-parallelism", args.array_parallelism), ("--slurm-opt", args.slurm_opt),
                                 ("--cpus-per-job", args.cpus_per_job), ("--mem-gb", args.mem_gb),
                                 ("--gpus-per-job", args.gpus_per_job)) if v not in (None, [])]
    if args.launcher == "local":
        if slurm_only:
            raise CLIError(f"{slurm_only[0]} applies to --launcher slurm (or submitit-local) only")
        return None
    for flag, v in (("--gpus-per-job", args.gpus_per_job), ("--cpus-per-job", args.cpus_per_job),
                    ("--array-parallelism", args.array_parallelism), ("--mem-gb", args.mem_gb)):
        if v is not None and v < (0 if flag == "--gpus-per-job" else 1):
            raise CLIError(f"{flag} must be {'>= 0' if flag == '--gpus-per-job' else '>= 1'}, got {v}")
    return SlurmOptions(cluster="slurm" if args.launcher == "slurm" else "local", partition=args.partition,
                        gpus_per_job=1 if args.gpus_per_job is None else args.gpus_per_job,
                        cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb,
                        time_min=parse_time(args.time) if args.time else 24 * 60,
                        array_parallelism=args.array_parallelism, extra=parse_slurm_opts(args.slurm_opt))


def cmd_export(args, extra) -> int:
    from .export import export_weights

    _reject_extra(extra)
    path = export_weights(args.run_dir, args.which, args.out, force=args.force)
    print(f"wrote {args.which} weights of {args.run_dir} to {path}")
    return 0


def cmd_protocols(args, extra) -> int:
    from .config import protocol_names, protocol_spec

    _reject_extra(extra)
    if args.name is None:
        for name in protocol_names():
            spec = protocol_spec(name)
            print(f"{name:18s} {spec['description']}; {spec['paper']}; code: {spec['repository']}")
        print("\nuse: ltadv train --protocol NAME --data-root DIR [--out RUN_DIR]; `ltadv protocols NAME` shows one")
        return 0
    spec = protocol_spec(args.name)
    for key in ("description", "paper", "repository", "source", "expect", "gpu_time", "differences"):
        print(f"{key}: {spec[key]}")
    print("config:")
    print("  " + yaml.safe_dump(spec["config"], sort_keys=False).replace("\n", "\n  ").rstrip())
    return 0


def cmd_list(args, extra) -> int:
    from .catalog import lines

    _reject_extra(extra)
    kinds = {"methods": "method", "models": "model", "augmentations": "aug", "attacks": "attack", "datasets": "data"}
    print("\n".join(lines([kinds[args.kind]] if args.kind else list(kinds.values()))))
    return 0


def cmd_config(args, extra) -> int:
    """Print the resolved config (and where it departs from its protocol) without running anything."""
    from .config import protocol_differences

    cfg = _config_from_args(args, extra)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    diffs = protocol_differences(cfg)
    if cfg.protocol:
        print(f"# protocol {cfg.protocol}: " + (", ".join(f"{k} {v['protocol']!r} -> {v['run']!r}" for k, v in
                                                       diffs.items()) if diffs else "no field differs"))
    return 0


def cmd_subset(args, extra) -> int:
    from .data import build_data, write_subset_file

    cfg = _config_from_args(args, extra)
    out = Path(args.file)
    if out.suffix != ".npz":
        raise CLIError(f"the subset file must end in .npz, got {out}")
    if out.exists() and not args.force:
        raise CLIError(f"{out} already exists; pass --force to replace it")
    data = build_data(cfg.data, cfg.seed)
    write_subset_file(out, data)
    print(f"wrote {len(data.y_train)} training and {len(data.y_val)} validation indices of {cfg.data.name} to {out}")
    print(f"class counts: {data.class_counts}")
    print(f"train on exactly these images with --data.subset_file {out}")
    return 0


def cmd_report(args, extra) -> int:
    from .report import write_report

    _reject_extra(extra)
    formats = [f for f in args.format.split(",") if f]
    from .report import to_markdown

    rep = write_report(args.runs_dir, args.out, formats, relative_to=args.relative_to, figures=not args.no_figures,
                       log=lambda m: print(f"ltadv: {m}", file=sys.stderr))
    for t in rep.tables[:2]:  # the class-wise table is too wide for a terminal: see the files
        print(to_markdown(t))
    print(f"report: {len(rep.paths)} files in {rep.out} ({rep.out / 'report.md'})")
    return 0


def cmd_bench(args, extra) -> int:
    _reject_extra(extra)
    try:  # the benchmark code ships beside the library as ltadv_bench (benchmarks/ltadv_bench)
        from ltadv_bench.train_eval import bench_autoattack_run, run_bench
    except ImportError as e:
        raise CLIError(f"ltadv bench needs the ltadv_bench package (benchmarks/ in the source tree; "
                         f"pip install -e . installs it): {e}") from None
    if args.aa_run:
        bench_autoattack_run(args.aa_run, n=args.aa_n or 100, device=args.device or "auto", out=args.out)
        return 0
    run_bench(args.model, batch_size=args.batch_size, rounds=args.rounds, steps=args.steps,
              num_workers=args.workers, device=args.device or "auto", out=args.out,
              aa_n=args.aa_n, same_allocator=args.same_allocator, compile=args.compile,
              ltadv_batch_size=args.ltadv_batch_size)
    return 0


def cmd_posthoc(args, extra) -> int:
    from .posthoc import run_posthoc

    _reject_extra(extra)
    attacks = [a for a in args.attacks.split(",") if a] if args.attacks else None
    lws_epochs = args.lws_epochs if args.lws else None
    record = run_posthoc(args.run_dir, args.out, tau_norm=args.tau_norm, lws_epochs=lws_epochs, lws_lr=args.lws_lr,
                         attacks=attacks, n=args.n, force=args.force, device=args.device)
    print(format_table({f"{record['config']['method']['name']}+{record['posthoc']['kind']}": record}))
    print(f"run record: {Path(args.out) / 'result.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltadv", description="Adversarial training under long-tailed distributions.",
                                allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"ltadv {__import__('ltadv').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="train one run", description="Train one run and evaluate it on the test split.",
                       allow_abbrev=False)
    _add_run_flags(t)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("run", help="train + evaluate + table (no arguments: the main job on digits-lt)",
                       description="Train one or more methods, evaluate them and print a side-by-side table. "
                                   "With no arguments: AT and AT-BSL on the embedded digits-lt.", allow_abbrev=False)
    _add_run_flags(r, multi_method=True)
    r.set_defaults(func=cmd_run, data_default="digits-lt")
    e = sub.add_parser("eval", help="evaluate a finished run's checkpoints",
                       description="Evaluate the best and/or last checkpoint of a run on the test split.",
                       allow_abbrev=False)
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--attacks", default="clean,pgd20",
                   help=f"comma-separated, from: {', '.join(sorted(_registries()['attack']))} "
                        f"(the full suite: clean,fgsm,pgd20,cw,lsa,aa)")
    e.add_argument("--n", "--first", type=int, default=None, dest="n",
                   help="evaluate the first N test images (kept as its own entry; the run's full-test numbers are "
                        "never replaced); under torchrun write --first N (torchrun takes --n for its own --nnodes)")
    e.add_argument("--eps", metavar="X", default=None, help="attack radius (default: the run's); another eps is "
                                                           "kept as its own entry")
    e.add_argument("--norm", default=None, metavar="linf|l2",
                   help="threat model of the attacks (default: the run's eval.norm or attack.norm); --eps is then "
                        "a radius in that norm; another norm is kept as its own entry")
    e.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the run's)")
    e.add_argument("--progress", action="store_true", help="progress bars / lines even if the run was --quiet")
    e.add_argument("--quiet", action="store_true", help="no progress output")
    e.add_argument("--which", default="best,last",
                   help="comma-separated: best, last, ema_best, ema_last (the last two: train.ema_decay > 0)")
    e.add_argument("--device", default=None)
    e.add_argument("--eps-sweep", action="store_true",
                   help="sanity check: PGD-20 accuracy at eps x 1, 2, 4, 8 must fall and reach ~0")
    e.set_defaults(func=cmd_eval)
    from .sweep import preset_names

    w = sub.add_parser("sweep", help="run a grid of runs from a YAML file or preset, resumably",
                       description="Run every cell of a sweep (skipping finished cells, resuming interrupted "
                                   "ones), print the table and write the report (as `ltadv report DIR`) into "
                                   "DIR/report. Dotted overrides apply to every cell.", allow_abbrev=False)
    w.add_argument("spec", metavar="FILE|PRESET", help=f"sweep YAML or preset: {', '.join(preset_names())}")
    w.add_argument("--out", metavar="DIR", help="folder for the cells (default runs/<sweep name>)")
    sl = w.add_argument_group("launcher (docs/slurm.md)")
    sl.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit-local"],
                    help="local: one cell after another here (default); slurm: a Slurm job array through "
                         "submitit, cells requeued after preemption resume from their checkpoints; "
                         "submitit-local: the same jobs as local processes (try a sweep before the cluster)")
    sl.add_argument("--partition", help="Slurm partition of the jobs")
    sl.add_argument("--gpus-per-job", type=int, default=None, help="GPUs per cell (default 1)")
    sl.add_argument("--cpus-per-job", type=int, default=None, help="CPU cores per cell (data loading)")
    sl.add_argument("--mem-gb", type=float, default=None, help="memory per cell in GB")
    sl.add_argument("--time", metavar="D-H:M:S", help="time limit per job (sbatch --time formats; default 1-00:00:00); "
                                                     "a cell that hits it is requeued and resumes")
    sl.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                    help="run at most N cells at a time (Slurm array %%N)")
    sl.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="any other sbatch option, repeatable: --slurm-opt account=mylab --slurm-opt qos=high")
    w.set_defaults(func=cmd_sweep)
    x = sub.add_parser("export", help="write a run's weights as one self-describing safetensors file",
                       description="Write the best or last weights of a run, with its config as metadata, to one "
                                   "safetensors file (ltadv.load_model accepts it).", allow_abbrev=False)
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--which", default="best", choices=["best", "last", "ema_best", "ema_last"],
                   help="raw weights (best, last) or the weight average's (ema_best, ema_last; train.ema_decay > 0)")
    x.add_argument("--out", metavar="FILE.safetensors", help="default: RUN_DIR/<name>-<which>.safetensors")
    x.add_argument("--force", action="store_true", help="replace an existing file")
    x.set_defaults(func=cmd_export)
    b = sub.add_parser("bench", help="speed of ltadv's training step and evaluation vs a reference-style baseline",
                       description="Time a reference-style baseline (per-image PIL DataLoader, fp32, NCHW, PGD via "
                                   "autograd) against ltadv's own training step, PGD-20 evaluation and AutoAttack on "
                                   "the same model, batch and data, in one process; print a table and write JSON.",
                       allow_abbrev=False)
    b.add_argument("--model", default="resnet18")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--rounds", type=int, default=3, help="timed rounds per side (median reported)")
    b.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    b.add_argument("--aa-n", type=int, default=0, help="points for the AutoAttack comparison (0: skip)")
    b.add_argument("--aa-run", metavar="RUN_DIR", help="only compare stock AutoAttack with ltadv's cascade on the "
                                                       "first --aa-n (default 100) test images of a trained run")
    b.add_argument("--same-allocator", action="store_true",
                   help="give the baseline ltadv's CPU allocator setting too (isolates the code paths' speed-up)")
    b.add_argument("--device", default=None)
    b.add_argument("--compile", action="store_true", help="ltadv's side with torch.compile (as --train.compile true)")
    b.add_argument("--ltadv-batch-size", type=int, default=None, metavar="N",
                   help="ltadv's training batch (default --batch-size): a throughput figure at a larger batch")
    b.add_argument("--out", metavar="FILE.json", default="benchmarks/results.json")
    b.set_defaults(func=cmd_bench)
    pr = sub.add_parser("protocols", help="list the reference protocols (each paper's exact recipe)",
                        description="The reference protocols shipped with ltadv: each reproduces one paper's run "
                                    "as its authors' code runs it. With NAME: its source, expected numbers, GPU "
                                    "time, what still differs, and its settings.", allow_abbrev=False)
    pr.add_argument("name", nargs="?", metavar="NAME")
    pr.set_defaults(func=cmd_protocols)
    ls = sub.add_parser("list", help="methods, models, augmentations, attacks and datasets, one line each",
                        description="Every registered name with what it is and its paper.", allow_abbrev=False)
    ls.add_argument("kind", nargs="?", choices=["methods", "models", "augmentations", "attacks", "datasets"])
    ls.set_defaults(func=cmd_list)
    cf = sub.add_parser("config", help="print the resolved config of these flags without running",
                        description="Resolve defaults, presets, --protocol, --config and flags as `ltadv train` "
                                    "would, print the result as YAML (usable as --config) and exit.",
                        allow_abbrev=False)
    _add_run_flags(cf)
    cf.set_defaults(func=cmd_config)
    sb = sub.add_parser("subset", help="write the long-tailed subset's image indices to an .npz file",
                        description="Draw the long-tailed subset a run with these settings would train on and "
                                    "write its indices (train_indices, val_indices: positions in the dataset's "
                                    "training set, RobustLT's split-file format). Train from such a file with "
                                    "--data.subset_file FILE.", allow_abbrev=False)
    sb.add_argument("file", metavar="FILE.npz")
    _add_run_flags(sb)
    sb.set_defaults(func=cmd_subset)
    rp = sub.add_parser("report", help="tables and figures from every run record under a folder",
                        description="Read every result.json under RUNS_DIR (recursively), average runs that "
                                    "differ only in the seed (mean +- std), and write the method, cost and "
                                    "class-wise tables and the figures (PNG and PDF).", allow_abbrev=False)
    rp.add_argument("runs_dir", metavar="RUNS_DIR")
    rp.add_argument("--out", metavar="DIR", help="output folder (default RUNS_DIR/report)")
    rp.add_argument("--format", default="md,csv,tex", help="comma-separated table formats: md, csv, tex")
    rp.add_argument("--relative-to", metavar="NAME", help="row label or run folder name: time and memory "
                                                          "ratios are to it")
    rp.add_argument("--no-figures", action="store_true", help="tables only")
    rp.set_defaults(func=cmd_report)
    ph = sub.add_parser("posthoc", help="tau-normalise or LWS-rescale a finished run's classifier into a new run",
                        description="Classifier-side long-tail fixes on a finished run (Kang et al., ICLR 2020, "
                                    "arXiv 1910.09217): tau-normalisation or learnable weight scaling. Writes and "
                                    "evaluates a NEW run folder; the source run is not modified.", allow_abbrev=False)
    ph.add_argument("run_dir", metavar="RUN_DIR")
    ph.add_argument("--out", metavar="DIR", required=True, help="the new run folder")
    ph.add_argument("--tau-norm", type=float, metavar="TAU", help="W_i / ||W_i||^TAU (RoBal: 1)")
    ph.add_argument("--lws", action="store_true", help="learn per-class scales on class-balanced PGD batches")
    ph.add_argument("--lws-epochs", type=int, default=10, help="LWS epochs (default 10)")
    ph.add_argument("--lws-lr", type=float, default=0.1, help="LWS learning rate (default 0.1)")
    ph.add_argument("--attacks", default=None, help="comma-separated attacks (default: the run's eval.attacks)")
    ph.add_argument("--n", type=int, default=None, help="evaluate the first N test images")
    ph.add_argument("--device", default=None)
    ph.add_argument("--force", action="store_true",
                    help="replace an earlier ltadv run in the output folder (its files only)")
    ph.set_defaults(func=cmd_posthoc)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "run" and args.data is None and args.config is None and args.protocol is None:
        args.data = "digits-lt"
    from .checkpoint import CheckpointError
    from .data import DataError
    from .rundir import RunDirError
    from .slurm import SlurmError
    from .sweep import SweepError

    try:
        return args.func(args, extra)
    except (ConfigError, DataError, CheckpointError, RunDirError, CLIError, SweepError, SlurmError, ValueError) as e:
        if os.environ.get("LTADV_DEBUG"):
            raise
        print(f"ltadv: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, no permission, a path that is a folder: one line, never a traceback
        if os.environ.get("LTADV_DEBUG"):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"ltadv: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("ltadv: interrupted; the last finished epoch is checkpointed (continue with --resume)", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)


if __name__ == "__main__":
    sys.exit(main())
