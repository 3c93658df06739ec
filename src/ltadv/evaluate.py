"""Evaluation: per-sample robust flags per attack, and every metric derived from the flags.

A point counts as robust to an attack only if it is classified correctly both clean and under the
attack; points misclassified clean are not attacked (STYLE principle 10). Metrics: overall, per
class, balanced (mean of per-class), worst class, and head / medium / tail groups of classes
(classes sorted by training count; first ``head_frac`` head, last ``tail_frac`` tail).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .attacks import ATTACKS
from .registry import lookup


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


def robust_flags(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[str],
    eps: float,
    batch_size: int = 512,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """{attack: bool flags (N,)}; "clean" is always computed first (correctness)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        correct = predict(model, x, batch_size, device) == y.cpu()
        flags = {"clean": correct}
        for name in attacks:
            if name == "clean":
                continue
            attack = lookup(ATTACKS, name, "attack")
            robust = correct.clone()
            idx_all = torch.nonzero(correct).flatten()
            bar = tqdm(list(_batches(len(idx_all), batch_size)), desc=name, disable=not progress, leave=False)
            for s in bar:
                idx = idx_all[s]
                xb = to_float(x[idx], device)
                yb = y[idx].to(device)
                x_adv = attack(model, xb, yb, eps)
                with torch.no_grad():
                    robust[idx] = (model(x_adv).argmax(1) == yb).cpu()
            flags[name] = robust
        return flags
    finally:
        model.train(was_training)


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
) -> dict[str, dict]:
    """{attack: summary} for every attack in ``attacks`` (``clean`` included when named)."""
    flags = robust_flags(model, x, y, attacks, eps, batch_size, progress)
    groups = class_groups(class_counts, head_frac, tail_frac)
    return {name: summarize(flags[name], y, len(class_counts), groups) for name in ["clean", *attacks]
            if name in flags and (name != "clean" or "clean" in attacks)}
