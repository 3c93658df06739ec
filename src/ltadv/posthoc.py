"""Classifier-side long-tail fixes applied to a finished run: tau-normalisation and LWS.

Both rescale each class's logit, z_i -> g_i z_i, by rescaling the linear head's row W_i and bias b_i;
the result is written as a NEW run folder (same record, new weights, a ``posthoc`` entry naming the
source) and evaluated there, so the original run is never modified.

- tau-normalisation: g_i = 1 / ||W_i||^tau (Kang et al., "Decoupling Representation and Classifier for
  Long-Tailed Recognition", ICLR 2020, arXiv 1910.09217, Sec. 4; tau = 1 as in RoBal's post-norm
  config). Kang et al. and RoBal use bias-free classifiers; our linear head was trained with a bias,
  so the bias is scaled with its row (the whole logit is rescaled) rather than dropped.
- LWS, learnable weight scaling (Kang et al., same paper): only g (one scalar per class, from 1)
  is trained, everything else frozen and in eval mode (BN statistics kept), on class-balanced
  re-sampled batches. As in RoBal's LWS config the second stage is adversarial: CE on PGD examples
  with the run's training attack; SGD lr 0.1, momentum 0.9; 10 epochs (RoBal: epochs 80 -> 90).
The inference-time logit adjustment (RoBal-N, ``method.tau_p``) needs no new weights: it is a
config field applied when a run is loaded (``--method.tau_p`` at training or ``ltadv eval``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .attacks import pgd
from .build import build_checked, pick_device
from .config import from_dict
from .data import build_data
from .data.sampler import balanced_order
from .evaluate import to_float
from .models.heads import LinearHead
from .results import RECORD_KEYS, RESULT, environment, read_record, write_json_atomic
from .run_eval import evaluate_run
from .rundir import CKPT_DIR, RunGuard
from .threat import class_eps


class PosthocError(ValueError):
    """A post-hoc step that cannot run as asked (cosine head, existing output, ...)."""


def _linear_head(model) -> LinearHead:
    if not isinstance(model.head, LinearHead):
        raise PosthocError("tau-normalisation and LWS rescale a linear classifier; this run has a "
                           f"{type(model.head).__name__}")
    return model.head


@torch.no_grad()
def scale_classes(model, g: torch.Tensor) -> None:
    """z_i -> g_i z_i: W_i *= g_i, b_i *= g_i in place."""
    head = _linear_head(model)
    head.weight.mul_(g.to(head.weight)[:, None])
    if head.bias is not None:
        head.bias.mul_(g.to(head.bias))


def tau_norm_scales(model, tau: float = 1.0) -> torch.Tensor:
    """g_i = 1 / ||W_i||^tau (tau-normalisation, Kang et al., ICLR 2020, arXiv 1910.09217)."""
    w = _linear_head(model).weight.detach()
    return w.norm(dim=1).clamp_min(1e-12).pow(-tau)


class _Scaled(nn.Module):
    def __init__(self, model, g):
        super().__init__()
        self.model, self.g = model, g

    def forward(self, x):
        return self.model(x) * self.g


def learn_weight_scales(model, data, cfg, epochs: int = 10, lr: float = 0.1, device=None, log=print) -> torch.Tensor:
    """LWS: train per-class logit scales g (from 1) on class-balanced PGD batches, all else frozen."""
    _linear_head(model)
    device = device or next(model.parameters()).device
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = nn.Parameter(torch.ones(data.num_classes, device=device))
    scaled = _Scaled(model, g)
    opt = torch.optim.SGD([g], lr=lr, momentum=0.9)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    a, bs = cfg.attack, cfg.optim.batch_size
    alpha = a.eps / 4 if a.alpha is None else a.alpha
    torch.manual_seed(cfg.seed)  # the attack's random starts
    for epoch in range(epochs):
        order = balanced_order(data.y_train, cfg.seed, 1_000_000 + epoch)  # a stream apart from training's
        total = 0.0
        for i in range(0, len(order), bs):
            idx = order[i:i + bs].to(device)
            x, y = to_float(x_train[idx], device), y_train[idx]
            eps = class_eps(cfg, data.num_classes, device)[y] if a.class_eps else a.eps  # the run's threat model
            x_adv = pgd(scaled, x, y, eps=eps, alpha=alpha, steps=a.steps, random_start=a.init, norm=a.norm)
            loss = nn.functional.cross_entropy(scaled(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log(f"LWS epoch {epoch + 1}/{epochs}  loss {total / len(order):.4f}")
    return g.detach()


def run_posthoc(run_dir, out, tau_norm: float | None = None, lws_epochs: int | None = None, lws_lr: float = 0.1,
                attacks=None, n: int | None = None, force: bool = False, device=None, log=print) -> dict:
    """Write ``out``: a copy of the run in ``run_dir`` with tau-normalised or LWS-scaled heads, evaluated."""
    if (tau_norm is None) == (lws_epochs is None):
        raise PosthocError("choose exactly one of --tau-norm TAU and --lws")
    if tau_norm is not None and tau_norm < 0:
        raise PosthocError(f"--tau-norm must be >= 0, got {tau_norm}")
    if lws_epochs is not None and lws_epochs < 1:
        raise PosthocError(f"--lws-epochs must be >= 1, got {lws_epochs}")
    run_dir, out = Path(run_dir), Path(out)
    src_abs, out_abs = run_dir.resolve(), out.resolve()
    if out_abs == src_abs:
        raise PosthocError("the post-hoc output must be a new folder, not the source run")
    if out_abs in src_abs.parents:
        raise PosthocError(f"--out {out} holds the source run {run_dir}; the output must be a new folder beside it")
    if src_abs in out_abs.parents:
        raise PosthocError(f"--out {out} is inside the source run {run_dir}, which is never modified; "
                           f"choose a folder outside it")
    record = read_record(run_dir, required=RECORD_KEYS)
    cfg = from_dict(record["config"])
    sources = [w for w in ("best", "last") if (run_dir / CKPT_DIR / f"{w}.safetensors").is_file()]
    if not sources:
        raise PosthocError(f"{run_dir} has no saved weights ({CKPT_DIR}/best.safetensors or last.safetensors)")
    device = device or pick_device(cfg.train.device)
    models = {}
    for which in sources:
        weights = run_dir / CKPT_DIR / f"{which}.safetensors"
        model = build_checked(cfg, record["model_meta"], weights, f"run record {run_dir / RESULT}")
        ckpt.load_weights(weights, model)
        _linear_head(model)
        models[which] = model.to(device).eval()
    data = build_data(cfg.data, cfg.seed)
    guard = RunGuard(out, log)  # --force replaces only an ltadv run folder, and only ltadv's files in it
    try:
        guard.start(resume=None, force=force)
        return _write_posthoc(run_dir, out, record, cfg, models, data, tau_norm, lws_epochs, lws_lr, attacks, n,
                              device, sources, log)
    finally:
        guard.close()


def _write_posthoc(run_dir, out, record, cfg, models, data, tau_norm, lws_epochs, lws_lr, attacks, n, device,
                   sources, log) -> dict:
    info: dict = {"source": str(run_dir), "scales": {}}
    for which, model in models.items():
        if tau_norm is not None:
            g = tau_norm_scales(model, tau_norm)
            info.update(kind="tau_norm", tau=tau_norm)
        else:
            log(f"LWS on the {which} checkpoint")
            g = learn_weight_scales(model, data, cfg, epochs=lws_epochs, lr=lws_lr, device=device, log=log)
            info.update(kind="lws", epochs=lws_epochs, lr=lws_lr)
        scale_classes(model, g)
        info["scales"][which] = [float(v) for v in g.cpu()]
        ckpt.save_weights(out / CKPT_DIR / f"{which}.safetensors", model)
    new = {k: v for k, v in record.items() if k not in ("metrics", "metrics_by_checkpoint", "eval")}
    new.update(status="trained", posthoc={**info, "source_environment": record.get("environment")},
               environment=environment())
    write_json_atomic(out / RESULT, new)
    return evaluate_run(out, attacks or cfg.eval.attacks, checkpoints=tuple(sources), n=n, data=data, device=device,
                        log=log)
