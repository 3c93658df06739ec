"""AutoAttack as a resumable cascade with per-sample robust flags.

AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, arXiv 2003.01690), standard L-inf version: APGD-CE (100
iterations), APGD-T (9 target classes x 100 iterations), FAB-T (9 targets x 100 iterations) and
Square (5000 queries), each run only on the points every earlier attack failed to break.

The attack code is the official one as packaged by ``pyautoattack`` 0.2.0; this module only
drives it. We drive the four sub-attacks ourselves instead of calling
``AutoAttack.run_standard_evaluation`` because that saves its state non-atomically, only marks an
attack finished after all of its batches, and on resume re-batches the remaining points, which
changes the seeded random starts: our state is written atomically after every batch, the batches
of a sub-attack are fixed when it starts, and every ``perturb`` call re-seeds the RNG, so a resumed
run gives exactly the flags of an uninterrupted one.

``aa_apgd`` is RoBal's "AA" (``attacks/auto_attack.py``, wutong16/Adversarial_Long-Tail): the
official ``AutoAttack(norm='Linf', version='standard')`` with ``attacks_to_run = ['apgd-ce', 'apgd-t']``,
i.e. the first two stages of ``aa`` with the same settings (100 iterations, one restart, 9 target
classes), as the same resumable cascade; it can only be weaker than ``aa``.

``aa_torchattacks`` is ``torchattacks.AutoAttack`` as used by the AT-BSL reference: it runs APGD,
APGD-T and FAB with 10 iterations instead of 100 (torchattacks issue #196), so it is weaker than
the official attack; it is offered only to compare with the paper's protocol.

Every AutoAttack variant takes ``norm`` (``"linf"`` or ``"l2"``): with ``l2`` it is the official L2
AutoAttack (``AutoAttack(norm='L2', version='standard')``: the same four sub-attacks with the L2 ball).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..progress import Progress
from ..registry import register
from ..shard import WHOLE, Shard, rng_scope
from . import ATTACKS, DEFAULT_SETTINGS, frozen_params

Stage = tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
AA_SEED = 0
# The official standard budget. Tests monkeypatch a smaller one; a weaker AA is never a product option.
AA_BUDGET = {"n_iter": 100, "n_queries": 5000}


class AttackUnavailable(ValueError):
    """An attack whose optional dependency is not installed."""


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode and ``requires_grad=False`` on every parameter for the duration (FAB calls
    ``backward``, which would otherwise accumulate parameter gradients); both restored after."""
    was_training = model.training
    model.eval()
    try:
        with frozen_params(model):
            yield model
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


AA_NORMS = {"linf": "Linf", "l2": "L2"}  # ltadv's norm names -> the official AutoAttack's


def autoattack_stages(model: torch.nn.Module, eps: float, num_classes: int, seed: int = AA_SEED,
                      n_iter: int = 100, n_queries: int = 5000, norm: str = "linf") -> list[Stage]:
    """The four sub-attacks of standard AutoAttack (L-inf, or L2 with ``norm="l2"``) as
    ``(name, fn(x, y) -> x_adv)``.

    Settings are the official ``version="standard"`` ones (set by ``pyautoattack.AutoAttack``);
    eps and the seed are passed explicitly and the device is the model's (the package defaults to
    CPU). With fewer than 10 classes the targeted attacks use the C - 1 other classes.
    ``n_iter`` / ``n_queries`` other than 100 / 5000 give a weaker AutoAttack, for fast tests only.
    """
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    device = _device(model)
    aa = AutoAttack(model, norm=AA_NORMS[norm], device=device, eps=float(eps), seed=seed, version="standard")
    aa.verbose = False
    if n_iter != 100:  # APGD derives its step-size checkpoints from n_iter in __init__: rebuild it
        common = dict(n_iter=n_iter, verbose=False, eps=float(eps), norm=AA_NORMS[norm], eot_iter=1, rho=0.75,
                      seed=seed, device=device, logger=aa.logger)
        aa.apgd = APGDAttack(model, n_restarts=1, **common)
        aa.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, **common)
        aa.fab.n_iter = n_iter
    aa.square.n_queries = n_queries
    n_targets = min(9, num_classes - 1)
    aa.apgd_targeted.n_target_classes = n_targets
    aa.fab.n_target_classes = n_targets

    def apgd_ce(x, y):
        aa.apgd.loss, aa.apgd.seed = "ce", seed
        return aa.apgd.perturb(x, y)

    def apgd_t(x, y):
        aa.apgd_targeted.seed = seed
        return aa.apgd_targeted.perturb(x, y)

    def fab_t(x, y):
        aa.fab.targeted, aa.fab.n_restarts, aa.fab.seed = True, 1, seed
        return aa.fab.perturb(x, y)

    def square(x, y):
        aa.square.seed = seed
        return aa.square.perturb(x, y)

    return [("apgd-ce", apgd_ce), ("apgd-t", apgd_t), ("fab-t", fab_t), ("square", square)]


def cascade_key(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, names: Sequence[str],
                batch_size: int, seed: int) -> str:
    """Fingerprint of everything a cascade's flags depend on: weights, data, eps, attacks, batching, seed."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr((float(eps), list(names), int(batch_size), int(seed))).encode())
    return h.hexdigest()


def _save_atomic(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _valid_state(state: dict, n: int | None, n_stages: int | None) -> bool:
    """The fields run_cascade reads, with the types and lengths it needs (a tampered file is not trusted)."""
    try:
        vecs = [state[k] for k in ("flags", "start_flags", "broken_by")]
        ok = all(isinstance(v, torch.Tensor) and v.dim() == 1 and (n is None or len(v) == n) for v in vecs)
        ok = ok and state["flags"].dtype == torch.bool and state["start_flags"].dtype == torch.bool
        ok = ok and not state["broken_by"].is_floating_point()
        ok = ok and isinstance(state["stage"], int) and 0 <= state["stage"] <= (n_stages or state["stage"])
        return ok and isinstance(state["batches_done"], int) and state["batches_done"] >= 0 \
            and isinstance(state["seconds"], float | int)
    except (KeyError, TypeError):
        return False


def _load_state(path: Path | None, key: str, log, n: int | None = None, n_stages: int | None = None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged cache file: start the attack again rather than fail
        log(f"ignoring unreadable attack state {path} ({type(e).__name__}); starting again")
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        log(f"attack state {path} belongs to other weights, data or settings; starting again")
        return None
    if not _valid_state(state, n, n_stages):
        log(f"attack state {path} is damaged (fields of the wrong type or length); starting again")
        return None
    return state


def run_cascade(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    stages: Sequence[Stage],
    correct: torch.Tensor | None = None,
    batch_size: int = 500,
    state_path: str | Path | None = None,
    key: str | None = None,
    progress: bool = False,
    return_adv: bool = False,
    log=print,
    shard: Shard = WHOLE,
) -> dict:
    """Run ``stages`` in order, each only on the points still robust; returns per-sample results.

    ``x`` (uint8 or float pixels) and ``y`` stay on their device; batches move to the model's.
    ``correct`` are the clean-correct flags (computed when omitted). A point's flag only ever goes
    from True to False, so no attack can mark robust a point an earlier one broke. With
    ``state_path`` the state is written atomically after every batch and a later call with the same
    ``key`` continues where the last one stopped (a finished state is reused as is).

    Returns ``{"flags": bool (N,), "broken_by": int (N,)`` (-1 robust, 0 misclassified clean,
    k = broken by stage k, 1-based), ``"stages": {name: robust accuracy after it}``, ``"seconds"``
    (attack time summed over resumed sessions), and ``"x_adv"`` when ``return_adv``.

    With ``shard`` (rank r of W processes, all calling this with the same arguments) every stage's
    points are cut into batches as in one process and rank r attacks the batches r, r + W, ...; the
    flags are combined after each stage (the next one starts from the points every rank left robust),
    so each rank returns the flags of one process. Each rank keeps its own ``state_path`` (its batches
    of the current stage); on resume the ranks agree on the furthest finished stage (:func:`_agree`).
    """
    if return_adv and (state_path is not None or shard.enabled):
        raise ValueError("return_adv is only available without a state file, in one process")
    names = [n for n, _ in stages]
    device = _device(model)
    state_path = Path(state_path) if state_path is not None else None
    state = _load_state(state_path, key, log, len(y), len(names)) if state_path is not None else None
    x_adv = None  # a float copy of every point only when asked for (a streamed test set stays on disk)
    if return_adv:
        x_adv = x.float().div(255) if x.dtype == torch.uint8 else x.detach().clone().float()
    with frozen(model):
        if state is None:
            if correct is None:
                with torch.no_grad():
                    correct = torch.cat([model(_batch(x, torch.arange(i, min(len(x), i + batch_size)), device))
                                         .argmax(1).cpu() for i in range(0, len(x), batch_size)]) == y.cpu()
            correct = correct.detach().cpu().bool()
            state = {"key": key, "stages": names, "flags": correct.clone(),
                     "broken_by": torch.where(correct, -1, 0).to(torch.int16),
                     "stage": 0, "start_flags": correct.clone(), "batches_done": 0, "seconds": 0.0}
        if shard.enabled:
            agreed = _agree(state, shard, log)
            if agreed is not state and state_path is not None:
                _save_atomic(state_path, agreed)
            state = agreed
        if state["batches_done"] or state["stage"]:
            log(f"resuming {'+'.join(names)} at {names[state['stage']] if state['stage'] < len(names) else 'end'}"
                f", batch {state['batches_done'] + 1}")
        while state["stage"] < len(stages):
            k = state["stage"]
            name, fn = stages[k]
            idx_all = torch.nonzero(state["start_flags"]).flatten()
            mine = shard.mine(-(-len(idx_all) // batch_size))  # this rank's batches of the global cut
            bar = Progress(len(mine), f"{name} on {len(idx_all)} points", progress, log, 30.0,
                           images_per_step=batch_size, initial=state["batches_done"])
            for j in range(state["batches_done"], len(mine)):
                start = time.perf_counter()
                b = mine[j]
                idx = idx_all[b * batch_size:(b + 1) * batch_size]
                xb, yb = _batch(x, idx, device), y[idx].to(device)
                with rng_scope(device):  # the sub-attacks re-seed the global generators: keep the caller's
                    adv = fn(xb, yb).detach()
                with torch.no_grad():
                    ok = (model(adv).argmax(1) == yb).cpu()
                broke = idx[~ok]
                state["flags"][broke] = False
                state["broken_by"][broke] = k + 1
                if return_adv:
                    x_adv[broke.to(x_adv.device)] = adv[~ok.to(adv.device)].to(x_adv.device)
                state["batches_done"] = j + 1
                state["seconds"] += time.perf_counter() - start
                if state_path is not None:
                    _save_atomic(state_path, state)
                bar.update(1)
            bar.close()
            if shard.enabled:  # every rank's broken points, before the next stage picks its points
                owned = torch.zeros(len(y), dtype=torch.bool)
                for b in mine:
                    owned[idx_all[b * batch_size:(b + 1) * batch_size]] = True
                state["flags"] = shard.combine(state["flags"], owned)
                state["broken_by"] = shard.combine(state["broken_by"], owned)
            if progress:  # one line per finished stage, terminal or not
                log(f"{name}: {int(state['flags'].sum())} of {len(y)} points still robust "
                    f"({float(state['flags'].float().mean()):.1%}) after {state['seconds']:.0f} s")
            state["stage"], state["batches_done"] = k + 1, 0
            state["start_flags"] = state["flags"].clone()
            if state_path is not None:
                _save_atomic(state_path, state)
    n = max(len(y), 1)
    bb = state["broken_by"]
    out = {"flags": state["flags"].clone(), "broken_by": bb.clone(), "seconds": float(state["seconds"]),
           "stages": {nm: float(((bb == -1) | (bb > k + 1)).sum()) / n for k, nm in enumerate(names)}}
    if return_adv:
        out["x_adv"] = x_adv
    return out


def _agree(state: dict, shard: Shard, log) -> dict:
    """The state this rank resumes with when the ranks' saved stages differ (a job stopped between the
    ranks' saves of a finished stage): the furthest stage wins. A rank at that stage has combined every
    rank's flags of the earlier stages (no stage ends before all ranks finished it), so a rank behind takes
    its flags and starts that stage's batches from the first; a rank at it keeps its own progress."""
    stages = shard.gather_objects(int(state["stage"]))
    furthest = max(stages)
    if min(stages) == furthest:
        return state
    src = stages.index(furthest)
    shared = shard.broadcast_object({k: state[k] for k in ("flags", "broken_by", "start_flags")}
                                    if shard.rank == src else None, src)
    if state["stage"] < furthest:
        log(f"resuming the cascade after its stage {furthest}, which process {src} finished")
        state = {**state, **shared, "stage": furthest, "batches_done": 0}
    return state


def _batch(x: torch.Tensor, idx: torch.Tensor, device) -> torch.Tensor:
    xb = x[idx.to(x.device)].to(device)
    return xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()


def _num_classes(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(_batch(x, torch.arange(1), _device(model))).shape[1])


# The sub-attacks of each AutoAttack variant, as indices into autoattack_stages.
AA_VARIANTS = {"aa": (0, 1, 2, 3), "aa_apgd": (0, 1)}


def _aa_stages(variant: str, model, x, eps, norm: str = "linf") -> list[Stage]:
    stages = autoattack_stages(model, eps, _num_classes(model, x), **AA_BUDGET, norm=norm)
    return [stages[i] for i in AA_VARIANTS[variant]]


def _aa_cascade_flags(variant, model, x, y, eps, correct=None, batch_size=500, state_path=None, progress=False,
                      log=print, shard: Shard = WHOLE, norm: str = "linf") -> dict:
    stages = _aa_stages(variant, model, x, eps, norm)
    names = [n for n, _ in stages] + [f"{k}={v}" for k, v in sorted(AA_BUDGET.items())]
    if norm != "linf":  # L-inf keys stay as they were, so saved L-inf states still resume
        names.append(f"norm={norm}")
    if shard.enabled:
        names.append(f"rank={shard.rank}/{shard.world_size}")
    key = cascade_key(model, x, y, eps, names, batch_size, AA_SEED)
    return run_cascade(model, x, y, stages, correct, batch_size, state_path, key, progress, log=log, shard=shard)


def _aa_cascade_adv(variant, model, x, y, eps, norm: str = "linf") -> torch.Tensor:
    return run_cascade(model, x, y, _aa_stages(variant, model, x, eps, norm), batch_size=max(len(x), 1),
                       return_adv=True,
                       log=lambda *a: None)["x_adv"]


def aa_flags(model, x, y, eps, correct=None, batch_size=500, state_path=None, progress=False, log=print,
             shard: Shard = WHOLE, norm: str = "linf") -> dict:
    """Standard AutoAttack as a resumable cascade on the clean-correct points (see :func:`run_cascade`)."""
    return _aa_cascade_flags("aa", model, x, y, eps, correct, batch_size, state_path, progress, log, shard, norm)


def aa_apgd_flags(model, x, y, eps, correct=None, batch_size=500, state_path=None, progress=False, log=print,
                  shard: Shard = WHOLE, norm: str = "linf") -> dict:
    """RoBal's AutoAttack (APGD-CE then APGD-T) as a resumable cascade on the clean-correct points."""
    return _aa_cascade_flags("aa_apgd", model, x, y, eps, correct, batch_size, state_path, progress, log, shard,
                             norm)


@register(ATTACKS, "aa")
def aa(model, x, y, eps, settings=None):
    """Standard L-inf AutoAttack (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein 2020, arXiv 2003.01690),
    official code via ``pyautoattack``, seed 0; ``settings.norm l2``: the official L2 version.
    Evaluation uses the resumable :func:`aa_flags`."""
    return _aa_cascade_adv("aa", model, x, y, eps, (settings or DEFAULT_SETTINGS).norm)


@register(ATTACKS, "aa_apgd")
def aa_apgd(model, x, y, eps, settings=None):
    """RoBal's "AA" (wutong16/Adversarial_Long-Tail ``attacks/auto_attack.py``): official standard L-inf
    AutoAttack restricted to APGD-CE (100 iterations, 1 restart) then APGD-T (9 target classes x 100
    iterations), seed 0. Evaluation uses the resumable :func:`aa_apgd_flags`."""
    return _aa_cascade_adv("aa_apgd", model, x, y, eps, (settings or DEFAULT_SETTINGS).norm)


aa.flags_fn = aa_flags
aa_apgd.flags_fn = aa_apgd_flags


def _torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise AttackUnavailable("attack aa_torchattacks needs the torchattacks package; install it with "
                                "`pip install --no-deps torchattacks==3.5.1` (its pinned requests 2.25.1 is "
                                "not needed)") from None
    return torchattacks


@register(ATTACKS, "aa_torchattacks")
def aa_torchattacks(model, x, y, eps, settings=None):
    """``torchattacks.AutoAttack(version="standard")``, the AT-BSL reference's evaluation: APGD-CE,
    APGD-T, FAB-T and Square, but with 10 iterations for the first three (weaker than ``aa``)."""
    torchattacks = _torchattacks()
    with frozen(model):
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        atk = torchattacks.AutoAttack(model, norm=AA_NORMS[(settings or DEFAULT_SETTINGS).norm], eps=float(eps),
                                      version="standard",
                                      n_classes=n_classes, seed=AA_SEED)
        return atk(x, y).detach()


aa_torchattacks.check = _torchattacks
