"""Figures as pure functions over grouped run records (:class:`ltadv.report_data.Group`), each returning a
matplotlib ``Figure`` (Agg backend, no display needed); :func:`save_figures` writes PNG and PDF.

The figures are those of the AT-BSL paper (Yue et al., "Revisiting Adversarial Training under
Long-Tailed Distributions", CVPR 2024, arXiv 2403.10073): robust-overfitting curves, class-wise
robustness with the class counts, robustness against tau_b, and robustness against the number of
stacked augmentations. Accuracies are in %, as in the tables. Groups average over seeds: lines are
means, shaded bands ± 1 std over seeds (the legend says so); the class-group bars carry 95% intervals.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .intervals import CONFIDENCE  # noqa: E402
from .report_data import (  # noqa: E402
    ATTACK_TITLES,
    GROUP_KEYS,
    Group,
    Stat,
    differing_keys,
    main_attack,
    make_labels,
)

COLORS = plt.get_cmap("tab10").colors
PERCENT = 100.0  # every figure shows accuracy in %, as the tables do
SPLIT_NAMES = {"val": "validation", "test": "test"}


def _title(attack: str | None) -> str:
    return ATTACK_TITLES.get(attack, attack or "")


def _integer_epochs(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def epoch_curve(group: Group, key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of one per-epoch field (e.g. ``val_robust``) over the group's seeds, in %;
    epochs where it is None (not evaluated: before ``eval.select_from``, or ``select_on last``) are left out."""
    by_epoch: dict[int, list[float]] = {}
    for rec in group.records:
        for e in rec.get("epochs") or []:
            if e.get(key) is not None:
                by_epoch.setdefault(int(e["epoch"]), []).append(PERCENT * float(e[key]))
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


def lr_changes(groups: list[Group]) -> list[tuple[int, float]]:
    """(1-based epoch, its lr) where a schedule steps down: the lr falls by a factor other than the one
    of the epoch before (so a step schedule marks each milestone once, RoBal's compounding decay marks
    where its factor changes, and a warm-up's rises mark nothing). Over every run, epochs sorted."""
    marks: dict[int, float] = {}
    for g in groups:
        for rec in g.records:
            lrs = [(int(e["epoch"]), e.get("lr")) for e in rec.get("epochs") or []]
            prev_ratio = 1.0
            for (_, a), (e, b) in zip(lrs, lrs[1:]):
                if not a or b is None:
                    continue
                ratio = b / a
                if ratio < 1 - 1e-9 and not math.isclose(ratio, prev_ratio, rel_tol=1e-6):
                    marks.setdefault(e, b)
                prev_ratio = ratio
    return sorted(marks.items())


def _mark_lr(ax, marks: list[tuple[int, float]], text: bool) -> None:
    """A dotted vertical line between the last epoch at the old rate and the first at the new one."""
    for e, lr in marks:
        ax.axvline(e - 0.5, color="0.35", ls=":", lw=1.0, zorder=1)
        if text:
            ax.annotate(f"lr {lr:.3g}", (e - 0.5, 0.0), xycoords=("data", "axes fraction"), xytext=(2, 3),
                        textcoords="offset points", fontsize=7, color="0.3", va="bottom", ha="left",
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})


def _seed_counts(groups: list[Group]) -> list[int]:
    return sorted({len(g.runs) for g in groups if len(g.runs) > 1})


def band_label(groups: list[Group], what: str = "± 1 std") -> str | None:
    """``"± 1 std over 3 seeds"`` (or ``over 2-3 seeds``) when some group has several seeds, else None."""
    counts = _seed_counts(groups)
    if not counts:
        return None
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{what} over {n} seeds"


def _band(ax, xs, means, stds, color, alpha=0.15) -> None:
    if any(stds):
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=color, alpha=alpha, lw=0)


def _legend_below(fig: Figure, handles: list, ncol: int = 3) -> None:
    """One legend under the panels (never over the data, however many groups), then the layout."""
    ncol = max(1, min(ncol, len(handles)))
    rows = math.ceil(len(handles) / ncol)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, min(0.45, 0.045 * rows + 0.02), 1, 1))


def _selection(groups: list[Group]) -> tuple[str, str]:
    """(split name(s), description) of the per-epoch evaluation: ``validation``, ``test`` or ``last``."""
    sels = [r.get("selection") or {} for g in groups for r in g.records]
    splits = sorted({str(s.get("split") or r["config"].get("eval", {}).get("select_on", "val"))
                     for s, r in zip(sels, (r for g in groups for r in g.records))})
    named = [SPLIT_NAMES.get(s, s) for s in splits if s != "last"]
    sizes = sorted({int(s["n"]) for s in sels if s.get("n")})
    size = f", {'/'.join(map(str, sizes))} images" if sizes else ""
    return " + ".join(named) or "last", (f"{' / '.join(named)} split{size}" if named else "")


def overfitting_curves(groups: list[Group]) -> Figure:
    """Robust (left) and clean (right) accuracy (%) per epoch on the selection split (validation or
    test, as the runs chose: the title says which), with the robust accuracy on the training batches
    under the training attack (dashed) on the left; one colour per group, the best (selected) epoch
    starred, lr decays dotted, shaded bands ± 1 std over seeds. Robust overfitting shows as a selection
    robust curve that peaks and falls while the training one keeps rising. Lines per panel: per group,
    selection curve + best star (+ training curve on the left); runs selecting on the last epoch have no
    selection curves."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), sharex=True)
    split, where = _selection(groups)
    val_attack = _val_attack(groups)
    for i, g in enumerate(groups):
        color = COLORS[i % len(COLORS)]
        best = best_epoch(g)
        xs, means, stds = epoch_curve(g, "train_robust_acc")
        if xs:
            axes[0].plot(xs, means, color=color, lw=1.2, ls="--")
            _band(axes[0], xs, means, stds, color, alpha=0.08)
        for ax, key in zip(axes, ("val_robust", "val_clean")):
            xs, means, stds = epoch_curve(g, key)
            if not xs:
                continue
            ax.plot(xs, means, color=color, label=g.label, lw=1.6)
            _band(ax, xs, means, stds, color)
            if best in xs:
                ax.plot([best], [means[xs.index(best)]], marker="*", ms=11, color=color, ls="none",
                        markeredgecolor="black", markeredgewidth=0.5)
    marks = lr_changes(groups)
    for ax in axes:
        _mark_lr(ax, marks, text=True)
        _integer_epochs(ax)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    if where:
        axes[0].set_title(f"robust accuracy ({val_attack}), {where}", fontsize=10)
        axes[1].set_title(f"clean accuracy, {where}", fontsize=10)
    else:
        axes[0].set_title("robust accuracy on the training batches", fontsize=10)
        axes[1].set_title("clean accuracy: not evaluated per epoch", fontsize=10)
        axes[1].text(0.5, 0.5, "eval.select_on last:\nno per-epoch evaluation", ha="center", va="center",
                     transform=axes[1].transAxes, color="0.4")
        axes[1].set_ylim(0, 100)
    colour_handles = [Line2D([], [], color=COLORS[i % len(COLORS)], lw=2, label=g.label) for i, g in enumerate(groups)]
    style = [Line2D([], [], color="0.2", lw=1.6, label=f"{split} split")] if where else []
    style.append(Line2D([], [], color="0.2", lw=1.2, ls="--", label="training batches (training attack)"))
    if where:
        style.append(Line2D([], [], color="0.2", marker="*", ms=10, ls="none", label="best epoch (selected)"))
    if marks:
        style.append(Line2D([], [], color="0.35", ls=":", lw=1.0, label="lr decay"))
    band = band_label(groups)
    if band:
        style.append(Patch(color="0.2", alpha=0.2, label=band))
    fig.suptitle(f"Training curves, best epoch chosen on: {split}" if where else
                 "Training curves (the last epoch is the result: no per-epoch evaluation)", fontsize=11)
    _legend_below(fig, colour_handles + style, ncol=3)
    return fig


def _val_attack(groups: list[Group]) -> str:
    names = {str(r["config"].get("eval", {}).get("val_attack", "pgd20")) for g in groups for r in g.records}
    return ", ".join(_title(n) for n in sorted(names))


def _interval_label(groups: list[Group]) -> str:
    kinds = []
    if any(len(g.runs) == 1 for g in groups):
        kinds.append(f"{CONFIDENCE:.0%} Wilson interval (one seed)")
    if any(len(g.runs) > 1 for g in groups):
        counts = _seed_counts(groups)
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        kinds.append(f"{CONFIDENCE:.0%} t interval over {n} seeds")
    return "error bars: " + "; ".join(kinds)


def classwise_robustness(groups: list[Group], attack: str | None = None) -> Figure:
    """Class-wise robustness under ``attack`` (default: the strongest attack all groups share), readable
    for 10 or 200 classes (the figure's size does not grow with the classes):

    - left, grouped view: head / medium / tail accuracy (%) per group as bars with their 95% intervals
      (Wilson for one seed, t over seeds), each group's classes and test images under it;
    - right, per class: accuracy of every class sorted from the most to the fewest training images (one
      line per group; ± 1 std band over seeds), the head / medium / tail ranges shaded, and the training
      images per class on a logarithmic second axis.
    """
    attack = attack or main_attack(groups)
    if attack is None:
        raise ValueError("no attack common to every run")
    fig, (ax_g, ax_c) = plt.subplots(1, 2, figsize=(11, 4.0), gridspec_kw={"width_ratios": [1, 2.1]})
    counts = groups[0].class_counts()
    n_classes = max(len(g.per_class(attack)) for g in groups)
    order = sorted(range(n_classes), key=lambda c: (-counts[c], c)) if len(counts) == n_classes else \
        list(range(n_classes))
    class_groups = groups[0].records[0].get("groups") or {}

    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        color = COLORS[i % len(COLORS)]
        stats = [g.accuracy(attack, k) for k in GROUP_KEYS]
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(GROUP_KEYS))]
        means = [PERCENT * s.mean if s else 0.0 for s in stats]
        err = [[PERCENT * (s.mean - s.lo) if s and s.lo is not None else 0.0 for s in stats],
               [PERCENT * (s.hi - s.mean) if s and s.hi is not None else 0.0 for s in stats]]
        ax_g.bar(xs, means, width=width, color=color, yerr=err, error_kw={"elinewidth": 0.9, "capsize": 2})
    images = [groups[0].accuracy(attack, k) for k in GROUP_KEYS]
    ax_g.set_xticks(range(len(GROUP_KEYS)))
    ax_g.set_xticklabels([f"{k}\n{len(class_groups.get(k) or [])} classes" +
                          (f"\n{s.images} test img" if s is not None and s.images else "")
                          for k, s in zip(GROUP_KEYS, images)], fontsize=8)
    ax_g.set_ylabel(f"{_title(attack)} accuracy (%)")
    ax_g.set_ylim(0, 100)
    ax_g.grid(axis="y", alpha=0.3)
    ax_g.set_title("by class group", fontsize=10)

    ranks = list(range(1, n_classes + 1))
    rank_of = {c: r for r, c in enumerate(order, start=1)}
    for k, shade in zip(GROUP_KEYS, ("0.93", "1.0", "0.93")):
        rs = sorted(rank_of[c] for c in class_groups.get(k) or [] if c in rank_of)
        if rs:
            ax_c.axvspan(rs[0] - 0.5, rs[-1] + 0.5, color=shade, zorder=0)
            ax_c.annotate(k, ((rs[0] + rs[-1]) / 2, 0.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                          textcoords="offset points", ha="center", va="bottom", fontsize=8, color="0.35",
                          bbox={"boxstyle": "square,pad=0.1", "fc": shade, "ec": "none", "alpha": 0.8})
    many = n_classes > 30
    for i, g in enumerate(groups):
        color = COLORS[i % len(COLORS)]
        stats = g.per_class(attack)
        pts = [(rank_of[c], stats[c]) for c in order if c < len(stats) and stats[c] is not None]
        xs = [r for r, _ in pts]
        means = [PERCENT * s.mean for _, s in pts]
        stds = [PERCENT * (s.std or 0.0) for _, s in pts]
        ax_c.plot(xs, means, color=color, lw=1.0 if many else 1.5, marker=None if many else "o", ms=3.5)
        _band(ax_c, xs, means, stds, color)
    ax_c.set_xlim(0.5, n_classes + 0.5)
    ax_c.set_ylim(0, 100)
    if n_classes <= 20:
        ax_c.set_xticks(ranks)
        ax_c.set_xticklabels([str(c) for c in order], fontsize=8)
        ax_c.set_xlabel("class (sorted from the most to the fewest training images)")
    else:
        _integer_epochs(ax_c)
        ax_c.set_xlabel("class rank (most to fewest training images)")
    ax_c.set_ylabel(f"{_title(attack)} accuracy (%)")
    ax_c.grid(axis="y", alpha=0.3)
    ax_c.set_title("per class", fontsize=10)
    ax2 = ax_c.twinx()
    handles = [Patch(color=COLORS[i % len(COLORS)], label=g.label) for i, g in enumerate(groups)]
    handles.append(Line2D([], [], color="black", marker="_", ms=8, ls="none", label=_interval_label(groups)))
    band = band_label(groups)
    if band:
        handles.append(Patch(color="0.2", alpha=0.2, label=f"per class: {band}"))
    if len(counts) == n_classes:
        ax2.plot(ranks, [counts[c] for c in order], color="black", lw=1, ls="--")
        ax2.set_yscale("log")
        ax2.set_ylabel("training images (log scale)")
        handles.append(Line2D([], [], color="black", lw=1, ls="--", label="training images (right axis)"))
    fig.suptitle(f"Class-wise robustness ({_title(attack)}, best checkpoint, test split)", fontsize=11)
    _legend_below(fig, handles, ncol=3)
    return fig


classwise_bars = classwise_robustness  # the name of earlier releases


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
    """Overall (solid) and tail (dashed) accuracy (%) vs x: 2 lines, ± 1 std bands over seeds."""
    xs = sorted(groups_by_x)
    for key, ls, name in (("overall", "-", "overall"), ("tail", "--", "tail")):
        stats = [Stat.of(v for g in groups_by_x[x] for v in _values(g, attack, key)) for x in xs]
        pts = [(x, s) for x, s in zip(xs, stats) if s is not None]
        if not pts:
            continue
        px = [x for x, _ in pts]
        means = [PERCENT * s.mean for _, s in pts]
        stds = [PERCENT * (s.std or 0.0) for _, s in pts]
        ax.plot(px, means, ls=ls, marker="o", ms=4, color=color, label=f"{label} {name}".strip())
        if len(px) == 1 and stds[0]:  # a band needs two points: the same ± 1 std as an error bar
            ax.errorbar(px, means, yerr=stds, color=color, alpha=0.5, capsize=3, ls="none")
        _band(ax, px, means, stds, color, alpha=0.12)


def _values(g: Group, attack: str, key: str) -> list[float]:
    return [r["metrics"][attack][key] for r in g.records
            if attack in (r.get("metrics") or {}) and r["metrics"][attack].get(key) is not None]


def _legend_with_band(ax, groups: list[Group]) -> None:
    handles, _ = ax.get_legend_handles_labels()
    band = band_label(groups)
    if band:
        handles.append(Patch(color="0.2", alpha=0.2, label=band))
    ax.legend(handles=handles, fontsize=8)


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
    ax.set_ylabel(f"{_title(attack)} accuracy (%)")
    ax.set_title(r"robustness vs $\tau_b$ (solid: overall, dashed: tail)")
    ax.grid(alpha=0.3)
    _legend_with_band(ax, groups)
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
            ax.scatter([x], [PERCENT * s.mean], s=14, color=color, edgecolors="black", linewidths=0.4, zorder=3)
            ax.annotate("+".join(g.config.get("data.aug") or ()) or "none", (x, PERCENT * s.mean), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("number of augmentations stacked (data.aug)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"{_title(attack)} accuracy (%)")
    ax.set_title("robustness vs augmentation stack (solid: overall, dashed: tail)")
    ax.grid(alpha=0.3)
    _legend_with_band(ax, groups)
    fig.tight_layout()
    return fig


def report_figures(groups: list[Group]) -> dict[str, Figure]:
    """Every figure that the groups support: the curves and bars always; the tau_b curve when the runs
    differ in ``method.tau_b``; the augmentation curve when they differ in ``data.aug``."""
    figs = {"overfitting": overfitting_curves(groups)}
    if main_attack(groups) is not None:
        figs["classwise"] = classwise_robustness(groups)
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
