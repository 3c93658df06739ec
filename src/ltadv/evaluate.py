"""Evaluation: per-sample robust flags per attack, and every metric derived from the flags.

A point counts as robust to an attack only if it is classified correctly both clean and under the
attack; points misclassified clean are not attacked (STYLE principle 10), unless the run's
``eval.attack_misclassified`` reproduces the AT-BSL and RoBal test scripts, which attack every point
and count a point robust when its adversarial image is classified correctly. Metrics: overall, per
class, balanced (mean of per-class), worst class, and head / medium / tail groups of classes
(classes sorted by training count; first ``head_frac`` head, last ``tail_frac`` tail).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .attacks import ATTACKS, AttackSettings
from .fast import eval_view
from .progress import Progress
from .registry import lookup
from .shard import WHOLE, Shard, batch_seed, rng_scope


def class_groups(class_counts: Sequence[int], head_frac: float = 1 / 3, tail_frac: float = 1 / 3) -> dict:
    """{"head": [...], "medium": [...], "tail": [...]} class indices, by training count (largest first)."""
    order = sorted(range(len(class_counts)), key=lambda c: (-class_counts[c], c))
    c = len(order)
    n_head = max(1, round(c * head_frac)) if c > 1 else 1
    n_tail = max(1, round(c * tail_frac)) if c > 1 else 0
    n_tail = min(n_tail, c - n_head)
    return {
        "head": sorted(order[:n_head]),
        "medium": sorted(order[n_head:c - n_tail]),
        "tail": sorted(order[c - n_tail:]),
    }


def summarize(flags: torch.Tensor, y: torch.Tensor, num_classes: int, groups: dict) -> dict:
    """Accuracy figures from per-sample correct/robust flags. Classes absent from ``y`` get NaN."""
    flags = flags.detach().cpu().float()
    y = y.detach().cpu()
    per_class = []
    for c in range(num_classes):
        m = y == c
        per_class.append(float(flags[m].mean()) if m.any() else float("nan"))
    present = [a for a in per_class if not math.isnan(a)]
    out = {
        "overall": float(flags.mean()) if len(flags) else float("nan"),
        "per_class": per_class,
        "balanced": sum(present) / len(present) if present else float("nan"),
        "worst": min(present) if present else float("nan"),
        "n": int(len(flags)),
        "per_class_n": [int((y == c).sum()) for c in range(num_classes)],  # for the report's intervals
    }
    for g, classes in groups.items():
        vals = [per_class[c] for c in classes if not math.isnan(per_class[c])]
        out[g] = sum(vals) / len(vals) if vals else float("nan")
    return out


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def to_float(x: torch.Tensor, device) -> torch.Tensor:
    """uint8 or float pixels -> float32 in [0, 1] on ``device``."""
    x = x.to(device, non_blocking=True)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 512, device=None) -> torch.Tensor:
    device = device or next(model.parameters()).device
    out = [model(to_float(x[s], device)).argmax(1).cpu() for s in _batches(len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def clean_flags(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, device, shard: Shard = WHOLE) -> torch.Tensor:
    """Correct-prediction flags (N,), each rank predicting its batches of the global cut (:mod:`ltadv.shard`)."""
    n = len(y)
    correct = torch.zeros(n, dtype=torch.bool)
    owned = torch.zeros(n, dtype=torch.bool)
    for b in shard.mine(-(-n // batch_size)):
        s = slice(b * batch_size, min(n, (b + 1) * batch_size))
        correct[s] = model(to_float(x[s], device)).argmax(1).cpu() == y[s].cpu()
        owned[s] = True
    return shard.combine(correct, owned)


def robust_flags(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[str],
    eps: float,
    batch_size: int = 512,
    progress: bool = False,
    state_dir: str | Path | None = None,
    details: dict | None = None,
    fast: bool = True,
    settings=None,
    shard: Shard | None = None,
) -> dict[str, torch.Tensor]:
    """{attack: bool flags (N,)}; "clean" is always computed first (correctness).

    ``settings`` is the run's ``cfg.eval`` (any object with those attribute names; ``None``: the
    defaults of SPEC section 5): ``alpha``, ``fgsm_init``, ``pgd_init``, ``mim_init``,
    ``clamp_start`` and ``norm`` (the threat model, linf or l2) go to the attacks that take them
    (:class:`ltadv.attacks.AttackSettings`; an attack without ``settings`` is L-inf only and is refused under L2);
    ``attack_misclassified`` attacks every point and flags a point robust when the attack leaves it
    classified correctly, clean-misclassified or not (the AT-BSL and RoBal scripts). Cascades
    (``aa``, ``aa_apgd``) attack only clean-correct points either way, as the official AutoAttack
    and ``torchattacks`` do, which leave a misclassified point as it is.

    With ``fast`` (default) predictions and attacks run on a BN-folded channels_last eval view of the
    model (:mod:`ltadv.fast`): the same function up to float rounding, ~1.5x faster on CPU.

    Cascade attacks (those with a ``flags_fn``, e.g. ``aa``) run through it, resumably when
    ``state_dir`` is given (``state_dir/<attack>.pt``). ``details``, when given, receives
    ``{attack: {"seconds": ..., "stages": {...}}}`` (stages: robust accuracy after each sub-attack).

    Every attack batch runs under its own seed (:func:`ltadv.shard.batch_seed`), so the flags do not
    depend on the caller's random state, and the global generators are left as they were. With
    ``shard`` (rank r of W processes, all calling this with the same arguments) each rank attacks the
    whole batches r, r + W, ... and every rank returns the flags of all points, equal to those of one
    process (:mod:`ltadv.shard`); ``seconds`` are this rank's.
    """
    shard = shard or WHOLE
    device = next(model.parameters()).device
    opts = AttackSettings.of(settings)
    attack_all = bool(getattr(settings, "attack_misclassified", False))
    was_training = model.training
    model.eval()
    live = model
    if fast:
        model = eval_view(model, fold_bn=True, channels_last=True)
    try:
        correct = clean_flags(model, x, y, batch_size, device, shard)
        flags = {"clean": correct}
        for name in attacks:
            if name == "clean":
                continue
            attack = lookup(ATTACKS, name, "attack")
            t0 = time.perf_counter()
            if hasattr(attack, "flags_fn"):
                # a cascade that does not take a shard runs whole on every rank (same flags, no speed-up)
                sharded = {"shard": shard} if "shard" in inspect.signature(attack.flags_fn).parameters else {}
                res = attack.flags_fn(model, x, y, eps, correct, batch_size=batch_size, progress=progress,
                                      state_path=Path(state_dir) / shard.state_name(name) if state_dir else None,
                                      **sharded, **({"norm": opts.norm} if opts.norm != "linf" else {}))
                flags[name] = res["flags"]
                if details is not None:
                    details[name] = {"seconds": res["seconds"], "stages": res["stages"]}
                continue
            robust = torch.zeros_like(correct) if attack_all else correct.clone()
            idx_all = torch.arange(len(correct)) if attack_all else torch.nonzero(correct).flatten()
            kwargs = {"settings": opts} if "settings" in inspect.signature(attack).parameters else {}
            if opts.norm != "linf" and not kwargs:
                raise ValueError(f"attack {name} has no {opts.norm} version")
            batches = list(_batches(len(idx_all), batch_size))
            mine = shard.mine(len(batches))
            owned = torch.zeros_like(correct)
            bar = Progress(len(mine), f"{name} on {len(idx_all)} points"
                           + (f" ({len(mine)} of {len(batches)} batches here)" if shard.enabled else ""),
                           progress, print, 30.0, images_per_step=batch_size)
            for b in mine:
                idx = idx_all[batches[b]]
                xb = to_float(x[idx], device)
                yb = y[idx].to(device)
                with rng_scope(device, batch_seed(name, b)):  # the batch's randomness is its own
                    x_adv = attack(model, xb, yb, eps, **kwargs)
                with torch.no_grad():
                    robust[idx] = (model(x_adv).argmax(1) == yb).cpu()
                owned[idx] = True
                bar.update(1)
            bar.close()
            flags[name] = shard.combine(robust, owned)
            if details is not None:
                details[name] = {"seconds": time.perf_counter() - t0}
        return flags
    finally:
        live.train(was_training)


def evaluate(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[str],
    eps: float,
    class_counts: Sequence[int],
    batch_size: int = 512,
    head_frac: float = 1 / 3,
    tail_frac: float = 1 / 3,
    progress: bool = False,
    state_dir: str | Path | None = None,
    flags_out: dict | None = None,
    seconds_out: dict | None = None,
    settings=None,
    shard: Shard | None = None,
) -> dict[str, dict]:
    """{attack: summary} for every attack in ``attacks`` (``clean`` included when named).

    Cascade summaries also hold ``stages`` (robust accuracy after each sub-attack); ``flags_out``
    and ``seconds_out``, when given, receive the per-sample flags and each attack's seconds (kept out
    of the summaries so that the metrics of a run are reproducible). ``settings`` and ``shard``: see
    :func:`robust_flags`.
    """
    details: dict = {}
    flags = robust_flags(model, x, y, attacks, eps, batch_size, progress, state_dir, details, settings=settings,
                         shard=shard)
    if flags_out is not None:
        flags_out.update(flags)
    if seconds_out is not None:
        seconds_out.update({k: v["seconds"] for k, v in details.items()})
    groups = class_groups(class_counts, head_frac, tail_frac)
    return {name: {**summarize(flags[name], y, len(class_counts), groups),
                   **({"stages": details[name]["stages"]} if "stages" in details.get(name, {}) else {})}
            for name in ["clean", *attacks] if name in flags and (name != "clean" or "clean" in attacks)}


# Sanity checks (Carlini et al., "On Evaluating Adversarial Robustness", arXiv 1902.06705; Croce & Hein,
# arXiv 2003.01690, section on gradient masking): they never change a number, they only warn.
STRONGER_THAN_PGD = ("aa", "aa_apgd", "aa_torchattacks")
MASKING_GAP = 0.05  # a logit-scaled or margin attack this much below PGD-20 means CE gradients were masked
AA_GAP = 0.10  # AutoAttack this much below PGD-20: the PGD-20 figure overstates robustness
SQUARE_GAIN = 0.002  # AutoAttack's own threshold for the black-box Square beating the white-box attacks


def sanity_warnings(flags: dict[str, torch.Tensor], metrics: dict[str, dict] | None = None) -> list[str]:
    """Warnings from per-sample flags: AA-robust => PGD-20-robust => clean-correct (violations are
    counted, not forced), and the signs of gradient masking: FGSM beating PGD-20, the logit-scaled
    or CW attack far below PGD-20, AutoAttack far below PGD-20, Square breaking points the
    white-box attacks missed (from ``metrics[aa]["stages"]``)."""
    out: list[str] = []
    acc = {k: float(v.float().mean()) for k, v in flags.items() if len(v)}
    clean = flags.get("clean")
    if clean is not None:
        for name, f in flags.items():
            bad = int((f.bool() & ~clean.bool()).sum()) if name != "clean" else 0
            if bad:
                out.append(f"{bad} points are {name}-robust but misclassified clean")
    pgd = flags.get("pgd20")
    for name in STRONGER_THAN_PGD:
        if pgd is not None and name in flags:
            bad = int((flags[name].bool() & ~pgd.bool()).sum())
            if bad:
                out.append(f"{bad} points are {name}-robust but broken by pgd20 ({name} missed points a weaker "
                           f"attack found)")
            if acc[name] < acc["pgd20"] - AA_GAP:
                out.append(f"{name} accuracy {acc[name]:.3f} is far below pgd20 {acc['pgd20']:.3f}: PGD-20 "
                           f"overstates robustness (gradient masking?)")
    if "pgd20" in acc:
        if "fgsm" in acc and acc["fgsm"] < acc["pgd20"]:
            out.append(f"fgsm accuracy {acc['fgsm']:.3f} is below pgd20 {acc['pgd20']:.3f}: a single step beats "
                       f"20, a sign of gradient masking")
        for name in ("lsa", "cw"):
            if name in acc and acc[name] < acc["pgd20"] - MASKING_GAP:
                out.append(f"{name} accuracy {acc[name]:.3f} is far below pgd20 {acc['pgd20']:.3f}: cross-entropy "
                           f"gradients look masked")
    stages = ((metrics or {}).get("aa") or {}).get("stages") or {}
    if "square" in stages and len(stages) > 1:
        white = min(v for k, v in stages.items() if k != "square")
        if stages["square"] < white - SQUARE_GAIN:
            out.append(f"the black-box Square attack lowered AutoAttack accuracy by {white - stages['square']:.3f} "
                       f"after the white-box attacks: gradient masking likely")
    return out


def eps_sweep(model, x, y, eps: float, factors: Sequence[float] = (1, 2, 4, 8), attack: str = "pgd20",
              batch_size: int = 512, shard: Shard | None = None, settings=None) -> dict:
    """Robust accuracy at eps x each factor, with warnings: it must not rise with eps and must reach
    about 0 at the largest eps (otherwise the attack is not working, e.g. masked gradients).
    ``settings`` as in :func:`robust_flags` (its ``norm`` makes it an L2 sweep)."""
    eps_list = [eps * f for f in factors]
    robust = [float(robust_flags(model, x, y, [attack], e, batch_size, shard=shard, settings=settings)[attack]
                    .float().mean())
              for e in eps_list]
    warnings = []
    for i in range(1, len(robust)):
        if robust[i] > robust[i - 1] + 0.01:
            warnings.append(f"{attack} accuracy rises with eps ({robust[i - 1]:.3f} at {eps_list[i - 1]:.4g} -> "
                            f"{robust[i]:.3f} at {eps_list[i]:.4g})")
    if robust and robust[-1] > 0.05:
        warnings.append(f"{attack} accuracy is still {robust[-1]:.3f} at eps {eps_list[-1]:.4g}: it should fall to "
                        f"~0 (gradient masking or a broken attack)")
    norm = AttackSettings.of(settings).norm
    return {"attack": attack, "eps": eps_list, "robust": robust, "warnings": warnings,
            **({"norm": norm} if norm != "linf" else {})}


def merge_saved_flags(path: str | Path, key: str, flags: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Merge ``flags`` with those saved at ``path`` under the same ``key`` (same points, same eps) and
    save the union atomically, so sanity checks see attacks from earlier ``ltadv eval`` calls too."""
    from . import checkpoint as ckpt

    path = Path(path)
    saved = {}
    if path.is_file():
        try:
            state = ckpt.load_state(path)
            if state.get("key") == key:
                saved = dict(state["flags"])
        except (ckpt.CheckpointError, KeyError, AttributeError, TypeError, ValueError):
            saved = {}
    n = {len(v) for v in flags.values()}
    # a damaged or edited file: keep only per-sample flag vectors of this evaluation's length
    saved = {k: v for k, v in saved.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
             and v.dim() == 1 and len(n) == 1 and len(v) in n}
    merged = {**saved, **{k: v.detach().cpu().bool() for k, v in flags.items()}}
    ckpt.save_state(path, {"key": key, "flags": merged})
    return merged
