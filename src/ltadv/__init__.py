"""ltadv: adversarial training under long-tailed class distributions.

Implements AT-BSL (Yue et al., "Revisiting Adversarial Training under Long-Tailed Distributions",
CVPR 2024, arXiv 2403.10073) and the systems it is compared with, with evaluation and reports.
"""

from __future__ import annotations

from pathlib import Path

from ._version import __version__


def load_model(run_dir: str | Path, which: str = "best", device=None):
    """The trained model of a run folder as an eval-mode ``nn.Module`` on pixels in [0, 1].

    ``which`` is ``"best"`` (chosen on the validation split, or the test split with
    ``eval.select_on test``) or ``"last"``; with a weight average (``train.ema_decay > 0``) also
    ``"ema_best"`` (the average's own selection) or ``"ema_last"``. ``run_dir`` may also be a file written
    by ``ltadv export``.
    """
    if str(run_dir).endswith(".safetensors"):
        from .export import load_exported

        return load_exported(run_dir, device)[0]
    from .build import load_run_model

    model, _ = load_run_model(run_dir, which, device)
    return model


__all__ = ["__version__", "load_model"]
