"""Figures as pure functions over grouped run records (:class:`ltadv.report.Group`), each returning a
matplotlib ``Figure`` (Agg backend, no display needed); :func:`save_figures` writes PNG and PDF.

The figures are those of the AT-BSL paper (Yue et al., "Revisiting Adversarial Training under
Long-Tailed Distributions", CVPR 2024, arXiv 2403.10073): robust-overfitting curves, class-wise
robustness with the class counts, robustness against tau_b, and robustness against the number of
stacked augmentations. Groups average over seeds: lines are means, shaded bands and error bars +- std.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .report import ATTACK_TITLES, Group, Stat, differing_keys, main_attack, make_labels  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


def _title(attack: str | None) -> str:
    return ATTACK_TITLES.get(attack, attack or "")


def epoch_curve(group: Group, key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of one per-epoch field (e.g. ``val_robust``) over the group's seeds."""
    by_epoch: dict[int, list[float]] = {}
    for rec in group.records:
        for e in rec.get("epochs") or []:
            if e.get(key) is not None:
                by_epoch.setdefault(int(e["epoch"]), []).append(float(e[key]))
    xs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[x]) for x in xs]
    stds = [statistics.stdev(by_epoch[x]) if len(by_epoch[x]) > 1 else 0.0 for x in xs]
    return xs, means, stds


def best_epoch(group: Group) -> int | None:
    """The run's recorded best epoch (one seed), else the epoch of the highest mean ``val_robust``
    (ties: the earlier, as the training loop picks)."""
    if len(group.records) == 1 and group.records[0].get("best_epoch") is not None:
        return int(group.records[0]["best_epoch"])
    xs, means, _ = epoch_curve(group, "val_robust")
    return xs[means.index(max(means))] if xs else None


def overfitting_curves(groups: list[Group]) -> Figure:
    """Validation robust (left) and clean (right) accuracy per epoch, one colour per group, the best
    (selected) epoch starred on both panels: robust overfitting shows as a robust curve that peaks and
    falls while the clean one keeps rising. Each panel holds 2 lines per group (curve + best marker)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for i, g in enumerate(groups):
        color = COLORS[i % len(COLORS)]
        best = best_epoch(g)
        for ax, key in zip(axes, ("val_robust", "val_clean")):
            xs, means, stds = epoch_curve(g, key)
            if not xs:
                continue
            ax.plot(xs, means, color=color, label=g.label, lw=1.5)
            if any(stds):
                ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=color, alpha=0.15, lw=0)
            if best in xs:
                ax.plot([best], [means[xs.index(best)]], marker="*", ms=11, color=color, ls="none",
                        markeredgecolor="black", markeredgewidth=0.5)
    val_attack = _val_attack(groups)
    axes[0].set_title(f"validation robust accuracy ({val_attack})")
    axes[1].set_title("validation clean accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, title="* best epoch", title_fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _val_attack(groups: list[Group]) -> str:
    names = {str(r["config"].get("eval", {}).get("val_attack", "pgd20")) for g in groups for r in g.records}
    return ", ".join(_title(n) for n in sorted(names))


def classwise_bars(groups: list[Group], attack: str | None = None) -> Figure:
    """Per-class accuracy under ``attack`` (default: the strongest attack all groups share), one bar
    per group side by side in each class (group count x class count bars), with the training images
    per class as a line on a second, logarithmic axis."""
    attack = attack or main_attack(groups)
    if attack is None:
        raise ValueError("no attack common to every run")
    n_classes = max(len(g.per_class(attack)) for g in groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n_classes * max(1, len(groups)) ** 0.5 + 3), 3.8))
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        stats = g.per_class(attack)
        xs = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(stats))]
        means = [s.mean if s else 0.0 for s in stats]
        errs = [s.std or 0.0 if s else 0.0 for s in stats]
        ax.bar(xs, means, width=width, color=COLORS[i % len(COLORS)], label=g.label,
               yerr=errs if any(errs) else None, error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(n_classes))
    ax.set_xlabel("class (training images decrease to the right)" if _sorted_counts(groups) else "class")
    ax.set_ylabel(f"{_title(attack)} accuracy")
    ax.set_ylim(0, 1.0)
    ax.grid(axis="y", alpha=0.3)
    counts = groups[0].class_counts()
    ax2 = ax.twinx()
    if counts:
        ax2.plot(range(len(counts)), counts, color="black", marker="o", ms=3, lw=1, label="training images")
        ax2.set_yscale("log")
        ax2.set_ylabel("training images (log)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right", ncol=2)
    ax.set_title(f"class-wise robustness ({_title(attack)}, best checkpoint)")
    fig.tight_layout()
    return fig


def _sorted_counts(groups: list[Group]) -> bool:
    c = groups[0].class_counts()
    return bool(c) and c == sorted(c, reverse=True)


def _series(groups: list[Group], axis_key: str) -> dict[str, list[Group]]:
    """Groups split into series by every differing key other than ``axis_key`` (series label from them)."""
    others = [k for k in differing_keys([g.config for g in groups]) if k != axis_key]
    if not others:
        return {"": list(groups)}
    reduced = [{k: g.config.get(k) for k in others} for g in groups]
    out: dict[str, list[Group]] = {}
    for g, label in zip(groups, make_labels(reduced)):
        out.setdefault(label, []).append(g)
    return out


def _metric_lines(ax, groups_by_x: dict, attack: str, color, label: str) -> None:
    """Overall (solid) and tail (dashed) accuracy vs x: 2 lines, +- std bands."""
    xs = sorted(groups_by_x)
    for key, ls, name in (("overall", "-", "overall"), ("tail", "--", "tail")):
        stats = [Stat.of(v for g in groups_by_x[x] for v in _values(g, attack, key)) for x in xs]
        pts = [(x, s) for x, s in zip(xs, stats) if s is not None]
        if not pts:
            continue
        px = [x for x, _ in pts]
        means = [s.mean for _, s in pts]
        stds = [s.std or 0.0 for _, s in pts]
        ax.plot(px, means, ls=ls, marker="o", ms=4, color=color, label=f"{label} {name}".strip())
        if any(stds):
            ax.fill_between(px, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=color, alpha=0.12, lw=0)


def _values(g: Group, attack: str, key: str) -> list[float]:
    return [r["metrics"][attack][key] for r in g.records
            if attack in (r.get("metrics") or {}) and r["metrics"][attack].get(key) is not None]


def tau_b_curve(groups: list[Group], attack: str | None = None) -> Figure:
    """Robust accuracy, overall (solid) and tail classes (dashed), against ``method.tau_b``; one colour
    per combination of the other differing settings (2 lines each). The paper's finding: the gain of
    the balanced softmax holds for every tau_b tried (tau_b = 0 is plain AT)."""
    attack = attack or main_attack(groups)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (label, gs) in enumerate(_series(groups, "method.tau_b").items()):
        by_x: dict[float, list[Group]] = {}
        for g in gs:
            by_x.setdefault(float(g.config.get("method.tau_b", 0.0)), []).append(g)
        _metric_lines(ax, by_x, attack, COLORS[i % len(COLORS)], label)
    ax.set_xlabel(r"$\tau_b$ (balanced softmax temperature)")
    ax.set_ylabel(f"{_title(attack)} accuracy")
    ax.set_title(r"robustness vs $\tau_b$ (solid: overall, dashed: tail)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def aug_stack_curve(groups: list[Group], attack: str | None = None) -> Figure:
    """Robust accuracy, overall (solid) and tail (dashed), against the number of augmentations stacked
    in ``data.aug`` (sets of the same size averaged; each set's overall accuracy is a labelled dot); one
    colour per combination of the other differing settings (2 lines each)."""
    attack = attack or main_attack(groups)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, gs) in enumerate(_series(groups, "data.aug").items()):
        color = COLORS[i % len(COLORS)]
        by_x: dict[int, list[Group]] = {}
        for g in gs:
            by_x.setdefault(len(g.config.get("data.aug") or ()), []).append(g)
        _metric_lines(ax, by_x, attack, color, label)
        for g in gs:
            s = Stat.of(_values(g, attack, "overall"))
            if s is None:
                continue
            x = len(g.config.get("data.aug") or ())
            ax.scatter([x], [s.mean], s=14, color=color, edgecolors="black", linewidths=0.4, zorder=3)
            ax.annotate("+".join(g.config.get("data.aug") or ()) or "none", (x, s.mean), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("number of augmentations stacked (data.aug)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"{_title(attack)} accuracy")
    ax.set_title("robustness vs augmentation stack (solid: overall, dashed: tail)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report_figures(groups: list[Group]) -> dict[str, Figure]:
    """Every figure that the groups support: the curves and bars always; the tau_b curve when the runs
    differ in ``method.tau_b``; the augmentation curve when they differ in ``data.aug``."""
    figs = {"overfitting": overfitting_curves(groups)}
    if main_attack(groups) is not None:
        figs["classwise"] = classwise_bars(groups)
        diff = differing_keys([g.config for g in groups])
        if "method.tau_b" in diff:
            figs["tau_b"] = tau_b_curve(groups)
        if "data.aug" in diff:
            figs["aug_stack"] = aug_stack_curve(groups)
    return figs


def save_figure(fig: Figure, stem: str | Path, dpi: int = 110) -> list[Path]:
    """``stem.png`` and ``stem.pdf``; closes the figure."""
    stem = Path(stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    try:
        fig.savefig(paths[0], dpi=dpi)
        fig.savefig(paths[1])
    finally:
        plt.close(fig)
    return paths


def save_figures(groups: list[Group], out: str | Path) -> list[Path]:
    return [p for name, fig in report_figures(groups).items() for p in save_figure(fig, Path(out) / name)]
