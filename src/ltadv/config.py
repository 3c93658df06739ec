"""Run configuration: frozen dataclasses whose defaults are the AT-BSL reference recipe.

Yue et al., "Revisiting Adversarial Training under Long-Tailed Distributions", CVPR 2024,
arXiv 2403.10073: CIFAR-10-LT (IR 50), ResNet-18, PGD-10 (eps 8/255, step 2/255) training,
SGD lr 0.1 / momentum 0.9 / weight decay 5e-4, batch 128, 100 epochs, lr x0.1 at 75 and x0.01 at 90.

Resolution order, later wins: these defaults < the dataset preset (``ltadv/presets/<data>.yaml``) <
the method preset (``ltadv/presets/methods/<method>.yaml``, e.g. RoBal's tau_b 1.5) < the user's YAML
(``--config``) < command-line flags and dotted overrides (``--method.tau_b 1.5``).
Unknown keys and values of the wrong type are a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key or value."""


@dataclass(frozen=True)
class Data:
    name: str = "cifar10-lt"  # digits-lt | cifar10-lt | cifar100-lt | tiny-imagenet-lt
    root: str | None = None  # folder holding the user's copy of the dataset
    imbalance_ratio: float = 50.0  # IR = n_max / n_min >= 1
    profile: str = "exp"  # exp | step
    n_max: int | None = None  # images of the largest class; None: all that the data has
    num_classes: int | None = None  # use only the first K classes; None: all
    val_per_class: int = 10  # balanced validation images held out per class before sub-sampling
    aug: tuple[str, ...] = ()  # augmentation names, applied in order
    crop_flip: bool = True  # random crop (pad 4) + horizontal flip after the augmentations
    aug_groups: int = 16  # independent AutoAugment/RA/TA/AugMix draws per batch; 0: one per image
    sampler: str = "uniform"  # uniform (a seeded permutation) | balanced (class-balanced re-sampling)
    resample_start: float = 0.0  # balanced sampler: fraction of the epochs before it starts (0: whole run)
    # Which images form the long-tailed subset (data/longtail.py). ltadv: numpy Generator(subset seed), the
    # validation hold-out first; ldam: LDAM-DRW's loader as the AT-BSL / RoBal / REAT scripts run it
    # (np.random.seed(subset seed), per-class np.random.shuffle in label order, counts by int()).
    subset_draw: str = "ltadv"  # ltadv | ldam
    subset_seed: int | None = None  # None: the training seed; several training seeds can share one subset
    subset_file: str | None = None  # .npz with train_indices (and val_indices), as RobustLT's split files
    subset_file_val: str = "val"  # val: the file's val_indices are the validation split | train: they train too
    drop_last: bool = False  # drop each epoch's last incomplete batch (the LDAM-DRW/RoBal loader does)
    # Streamed data sets (imagenet-lt; ltadv/data/stream.py): images decoded from disk by DataLoader workers
    image_size: int | None = None  # imagenet-lt's square crop in pixels (None: 224); 112, or 64 with resnet50_small
    workers: int | None = None  # decoding processes (None: the CPUs this process may use - 1, at most 16; 0: here)
    split_dir: str | None = None  # folder with ImageNet_LT_{train,val,test}.txt (None: data.root)


@dataclass(frozen=True)
class Model:
    name: str = "resnet18"
    head: str = "linear"  # linear | cosine (RoBal)
    channels_last: str = "auto"  # auto: model on CUDA, attack view always | on | off
    normalize: bool = True  # first layer (x - mean) / std; the AT-BSL / RoBal / TRADES models take raw [0, 1]
    # linear head's bias starts at log(pi / (1 - pi)), pi the class prior (RoBal's FC_Classifier focal_init)
    focal_bias_init: bool = False


@dataclass(frozen=True)
class Method:
    name: str = "at_bsl"
    tau_b: float = 1.0  # balanced-softmax temperature (AT-BSL reference: 1)
    beta: float = 6.0  # TRADES / MART regularisation weight
    s: float = 10.0  # cosine-classifier scale (RoBal)
    gamma: float = 1.0 / 32  # cosine head: W_i / (||W_i|| + gamma) (RoBal code)
    tau_m: float = 0.3  # class-aware margin temperature (RoBal)
    m0: float = 0.1  # class-aware margin offset (RoBal)
    bsl: bool = True  # RoBal switches, one per part
    cosine: bool = True
    margin: bool = True
    trades: bool = True
    tau_p: float = 0.0  # post-hoc logit adjustment at inference (RoBal-N uses 0.1)
    # Long-tail baselines (methods/outer.py, losses_lt.py): the outer loss of at / at_bsl / trades.
    # auto (the method's own) | ce | bsl | focal | cb | ldam | la | cdt | focal_sigmoid | cb_focal_sigmoid
    outer_loss: str = "auto"
    reweight: str = "none"  # none | inverse | effective: per-class sample weights in the outer loss
    drw_start: float = 0.0  # re-weighting starts at this fraction of the epochs (LDAM-DRW: 0.8)
    focal_gamma: float = 2.0  # focal loss (Lin et al. 2017; RoBal config)
    cb_beta: float = 0.9999  # effective-number beta (Cui et al. 2019)
    ldam_max_m: float = 0.5  # LDAM largest margin (Cao et al. 2019)
    ldam_s: float = 1.0  # LDAM logit scale (RoBal's linear-head config; 30 with a cosine head)
    la_tau: float = 1.0  # logit-adjusted loss temperature (Menon et al. 2021)
    cdt_gamma: float = 0.3  # CDT temperature exponent (RoBal config)
    reat_tail: float = 1.0  # REAT: weight of the tail-feature term
    # RoBal: where the cosine scale s lives. loss (RoBal's code): the head outputs cos, s and the margin
    # are applied inside the loss, so the attack and the TRADES KL see cos; head: the head outputs s * cos.
    scale_in: str = "loss"  # loss | head
    # AWP (Wu, Xia, Wang, NeurIPS 2020; ltadv/awp.py): one proxy ascent step on the method's own loss at
    # x', each weight matrix moved by awp_gamma * ||W|| in that direction for the step, then restored.
    awp: bool = False
    awp_gamma: float = 5e-3  # TRADES-AWP's and RobustLT's value; AT-AWP (train_cifar10.py) uses 1e-2
    awp_warmup: int = 0  # 1-based epoch from which AWP is on (TRADES-AWP: 10; AT-AWP, RobustLT: from the start)
    # TAET (methods/taet.py; the authors' TAET.ipynb and HARL.py): clean CE for the first taet_ce_epochs epochs,
    # then HARL = alpha * balanced + beta * hierarchical deviation + gamma * rare-class emphasis
    taet_ce_epochs: int = 40
    taet_alpha: float = 0.1
    taet_beta: float = 0.1
    taet_gamma: float = 0.1
    # RobustLT's class-wise wrapper (methods/robustlt.py): eps_c = (1 - alpha) eps + tau sqrt(log(n_max / n_c)) eps,
    # ramped in over the first robustlt_beta of the epochs; values of RobustLT's CIFAR-10-LT AT-BSL config
    robustlt: bool = False
    robustlt_alpha: float = 0.3
    robustlt_beta: float = 0.8
    # CFA (Wei et al., CVPR 2023; methods/cfa.py, PKU-ML/CFA train.py): class-wise calibrated eps (CCM) and
    # TRADES weight (CCR) from each class's training robust accuracy of the previous epoch
    cfa_ccm: bool = True  # CCM: eps_k = (cfa_lambda1 + A_k) * eps
    cfa_ccr: bool = True  # CCR (trades_cfa): beta_k = (l2 + A_k) beta / (1 + (l2 + A_k) beta), l2 = cfa_lambda2
    cfa_lambda1: float = 0.5  # their --lambda-1 default
    cfa_lambda2: float = 0.5  # their --lambda-2 default
    cfa_begin: int = 10  # 0-based epoch from which the calibration applies (their --begin)
    # class: A_k = correct_k / n_k (the paper); total: C * correct_k / N, as their CW_log.result() computes it
    # (the same on balanced data; on long-tailed data it scales A_k by n_k / (N / C))
    cfa_acc: str = "class"


@dataclass(frozen=True)
class Attack:
    """The training-time inner maximisation (PGD, L-inf)."""

    eps: float = 8 / 255
    alpha: float | None = None  # step size; None: eps / 4 (2/255 at eps 8/255)
    steps: int = 10
    # normal: x + 0.001 N(0,1) (reference) | uniform: U(-eps, eps) | uniform_plus: U[0, eps) (RoBal) | zero
    init: str = "normal"
    # clip the random start to the eps-ball and [0, 1] before the first gradient; the AT-BSL, RoBal, TRADES,
    # MART and REAT training attacks take their first gradient at the unclipped start (clipping after each step)
    clamp_start: bool = True
    norm: str = "linf"  # the threat model of training and (unless eval.norm) evaluation: linf | l2 (ltadv.threat)
    class_eps: tuple[float, ...] = ()  # per-class training eps, one per class (empty: attack.eps for every class)


@dataclass(frozen=True)
class Optim:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    batch_size: int = 128
    milestones: tuple[float, ...] = (0.75, 0.9)  # where lr *= lr_decay, in milestone_unit
    lr_decay: float = 0.1
    # fraction: milestone m drops the rate from 1-based epoch m * epochs on (0.75 of 100: epoch 75, as
    # the AT-BSL script's `epoch >= 75`); epoch: milestones are the authors' 1-based epoch numbers.
    milestone_unit: str = "fraction"  # fraction | epoch
    # step: lr * lr_decay^(milestones passed); compound: RoBal's adjust_learning_rate, which multiplies the
    # CURRENT rate by lr_decay^(milestones passed) every epoch (so it keeps falling after a milestone).
    lr_schedule: str = "step"  # step | compound
    # 1-based epochs e < warmup_epochs scale the rate by (e + 1) / warmup_epochs (RoBal's adjust_learning_rate;
    # compounding with lr_schedule compound, as there)
    warmup_epochs: int = 0


@dataclass(frozen=True)
class Train:
    epochs: int = 100
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    compile: bool = False
    fold_bn: bool = True  # attacks run on a BN-folded eval-mode copy of the model (same function, faster)
    progress: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms on CUDA
    max_batches: int | None = None  # stop each epoch after this many batches (smoke-test a real recipe quickly)
    log_every: float = 30.0  # seconds between progress lines when stdout is not a terminal (0: every batch)
    sync_bn: bool = False  # DDP: SyncBatchNorm, BN statistics over all processes' batches (CUDA only)
    # EMA of the weights (ltadv/ema.py), evaluated and selected beside the raw weights; 0 is off.
    ema_decay: float = 0.0
    ema_warmup: int = 0  # optimizer steps before averaging starts (the average copies the weights until then)
    ema_bn: str = "ema"  # ema: BN running statistics averaged with the weights | copy: the raw model's (RobustLT)


@dataclass(frozen=True)
class Eval:
    attacks: tuple[str, ...] = ("clean", "pgd20")
    eps: float | None = None  # None: the training eps
    n: int | None = None  # evaluate the first n test images; None: all
    batch_size: int = 512
    val_attack: str = "pgd20"  # robust accuracy tracked every epoch on the validation split
    val_n: int | None = None  # size of the fixed per-epoch evaluation subset; None: whole split
    select_on: str = "val"  # val | test | last: where the best epoch is chosen (AT-BSL: test; RoBal: last)
    select_from: int = 1  # 1-based epoch from which the selection split is evaluated (AT-BSL: 75); the
    # epochs before it are not evaluated at all; the last epoch always is
    select_ties: str = "first"  # first | last: which epoch wins a tie (REAT's `>=` keeps the later one)
    checkpoints: tuple[str, ...] = ("best", "last")
    head_frac: float = 1 / 3  # classes sorted by count: the first third is head,
    tail_frac: float = 1 / 3  # the last third tail, the rest medium
    # Details of the test attacks (and val_attack) where an author's test script differs from SPEC
    # section 5; the defaults are section 5. Starts: zero (x) | uniform (x + U(-eps, eps)) |
    # normal (x + 0.001 N(0, 1)) | uniform_plus (x + U[0, eps)).
    alpha: float | None = None  # step of pgd20, cw, lsa, mim; None: eps / 4 (2/255 at 8/255)
    fgsm_init: str = "zero"  # fgsm start (AT-BSL eval.py: normal); its one step is eps
    pgd_init: str = "uniform"  # start of pgd20, cw, lsa
    mim_init: str = "zero"  # mim start (RoBal: uniform)
    clamp_start: bool = True  # project the start onto the ball and [0, 1] before the first gradient (authors: no)
    attack_misclassified: bool = False  # attack every point; robust = correct under attack (authors' scripts)
    max_batches: int | None = None  # evaluate only the first max_batches * batch_size images (smoke tests)
    norm: str | None = None  # linf | l2 for the test attacks; None: attack.norm


@dataclass(frozen=True)
class Config:
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    method: Method = field(default_factory=Method)
    attack: Attack = field(default_factory=Attack)
    optim: Optim = field(default_factory=Optim)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    seed: int = 0
    protocol: str | None = None  # a reference protocol (ltadv/protocols/<name>.yaml) these settings start from

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the harmless cases (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return _parse_number(value)
            except ValueError as e:
                if "divides by zero" in str(e):
                    raise ConfigError(f"{key}: {e}") from None
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _parse_number(text: str) -> float:
    """``"8/255"`` or ``"0.03"`` -> float: fractions are how eps is usually written."""
    if "/" in text:
        num, den = text.split("/", 1)
        if float(den) == 0:
            raise ValueError(f"{text!r} divides by zero")
        return float(num) / float(den)
    return float(text)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}{unknown[0]}"
        raise ConfigError(f"unknown config key {where!r}; known keys under {prefix or 'the top level'}: "
                          f"{', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp = hints[f.name]
        v = values[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{prefix}{f.name}: expected a mapping of keys, got {v!r}")
            kwargs[f.name] = _build(tp, v, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(v, tp, f"{prefix}{f.name}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"method.tau_b": 1.5}`` -> ``{"method": {"tau_b": 1.5}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p!r} is a value, not a group")
        node[parts[-1]] = value
    return nested


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e.reason}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def preset(data_name: str) -> dict[str, Any]:
    """The built-in differences for a dataset (e.g. digits-lt uses a small CNN and eps 0.1)."""
    res = resources.files("ltadv") / "presets" / f"{data_name}.yaml"
    if not res.is_file():
        return {}
    return yaml.safe_load(res.read_text()) or {}


def method_preset(method_name: str) -> dict[str, Any]:
    """A method's own defaults where they differ from the AT-BSL reference (``presets/methods/<name>.yaml``),
    e.g. RoBal's tau_b = 1.5; applied after the dataset preset and before the user's YAML and flags."""
    res = resources.files("ltadv") / "presets" / "methods" / f"{method_name}.yaml"
    if not res.is_file():
        return {}
    return yaml.safe_load(res.read_text()) or {}


PROTOCOL_META_KEYS = {"description", "paper", "repository", "source", "expect", "gpu_time", "differences"}


def protocol_names() -> list[str]:
    """The reference protocols shipped in the package (``ltadv/protocols/<name>.yaml``)."""
    folder = resources.files("ltadv") / "protocols"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def protocol_spec(name: str) -> dict[str, Any]:
    """``{"name", "description", "paper", "repository", ..., "config": {...}}`` of one protocol.

    A protocol fixes everything the authors' run fixes (data counts and subset draw, model, optimiser,
    schedule, training and evaluation attacks, selection rule, augmentation), read from their code.
    """
    res = resources.files("ltadv") / "protocols" / f"{name}.yaml"
    if not name or "/" in name or not res.is_file():
        raise ConfigError(f"unknown protocol {name!r}; choose one of: {', '.join(protocol_names())} "
                          f"(`ltadv protocols` lists them)")
    spec = yaml.safe_load(res.read_text()) or {}
    meta = spec.get("protocol") or {}
    return {"name": name, **{k: meta.get(k) for k in sorted(PROTOCOL_META_KEYS)}, "config": spec.get("config") or {}}


def _protocol_raw(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    if not isinstance(name, str):
        raise ConfigError(f"protocol: expected a protocol name, got {name!r}")
    return {**protocol_spec(name)["config"], "protocol": name}


def _resolve_raw(merged_user: dict[str, Any]) -> dict[str, Any]:
    """defaults < dataset preset < method preset < protocol < the user's YAML and flags (``merged_user``)."""
    proto = _protocol_raw(merged_user.get("protocol"))
    chosen = _merge(proto, merged_user)
    data_name = (chosen.get("data") or {}).get("name", Data.name)
    method_name = (chosen.get("method") or {}).get("name", Method.name)
    raw = _merge(_merge(to_dict(Config()), preset(str(data_name))), method_preset(str(method_name)))
    return _merge(_merge(raw, proto), merged_user)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Resolve a :class:`Config` from defaults, dataset preset, method preset, protocol, YAML file and
    dotted overrides (later wins; ``protocol`` may be set in the YAML or as an override)."""
    user = read_yaml(path) if path else {}
    cli = dotted_to_nested(overrides or {})
    merged_user = _merge(user, cli)
    cfg = _build(Config, _resolve_raw(merged_user), "")
    validate(cfg)
    return cfg


def protocol_differences(cfg: Config) -> dict[str, dict[str, Any]]:
    """``{"optim.lr": {"protocol": 0.1, "run": 0.05}, ...}``: where a run departs from its protocol.

    The protocol's own resolution (defaults, presets, protocol file) is compared field by field with the
    run's config; fields a protocol leaves open (device, progress, ...) count only when the protocol sets them.
    """
    if cfg.protocol is None:
        return {}
    spec = protocol_spec(cfg.protocol)
    ref = _build(Config, _resolve_raw({"protocol": cfg.protocol}), "")

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fixed = set(flat(spec["config"]))
    mine, theirs = flat(cfg.to_dict()), flat(ref.to_dict())
    return {k: {"protocol": theirs[k], "run": mine[k]} for k in sorted(mine)
            if mine[k] != theirs[k] and k in fixed}


def replace(cfg: Config, **dotted: Any) -> Config:
    """A copy of ``cfg`` with dotted keys replaced, re-validated: ``replace(cfg, **{"method.name": "at"})``."""
    raw = _merge(to_dict(cfg), dotted_to_nested(dotted))
    new = _build(Config, raw, "")
    validate(new)
    return new


def from_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a saved config (``result.json["config"]``)."""
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


SEED_MAX = 2**32 - 1  # numpy's global generator takes seeds in [0, 2**32)


def _check_finite(cfg: Config) -> None:
    """Every float field is finite (NaN or inf would train to a NaN model), plus the ranges a
    non-finite guard relies on: the seed's, the optimiser's."""
    def walk(obj, prefix: str):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(v):
                yield from walk(v, f"{key}.")
            elif isinstance(v, tuple):
                yield from ((key, x) for x in v if isinstance(x, float))
            elif isinstance(v, float):
                yield key, v

    for key, v in walk(cfg, ""):
        if not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v}")
    checks = [
        (0 <= cfg.seed <= SEED_MAX, f"seed must be in [0, {SEED_MAX}], got {cfg.seed}"),
        (cfg.optim.momentum >= 0, f"optim.momentum must be >= 0, got {cfg.optim.momentum}"),
        (cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}"),
        (cfg.optim.lr_decay > 0, f"optim.lr_decay must be > 0, got {cfg.optim.lr_decay}"),
        (cfg.train.epochs <= 1_000_000, f"train.epochs must be <= 1000000, got {cfg.train.epochs}"),
        (cfg.attack.steps <= 1_000_000, f"attack.steps must be <= 1000000, got {cfg.attack.steps}"),
        (cfg.eval.val_n is None or cfg.eval.val_n >= 1, f"eval.val_n must be >= 1, got {cfg.eval.val_n}"),
    ]
    _require(checks)


def _require(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed (ok, message) check as a ConfigError."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Range checks that need no registry; names are checked where the registries live."""
    _check_finite(cfg)
    checks = [
        (cfg.attack.eps >= 0, f"attack.eps must be >= 0, got {cfg.attack.eps}"),
        (cfg.attack.alpha is None or cfg.attack.alpha > 0, f"attack.alpha must be > 0, got {cfg.attack.alpha}"),
        (cfg.attack.steps >= 1, f"attack.steps must be >= 1, got {cfg.attack.steps}"),
        (cfg.attack.init in ("normal", "uniform", "uniform_plus", "zero"),
         f"attack.init must be normal, uniform, uniform_plus or zero, got {cfg.attack.init!r}"),
        (cfg.eval.eps is None or cfg.eval.eps >= 0, f"eval.eps must be >= 0, got {cfg.eval.eps}"),
        (cfg.data.imbalance_ratio >= 1,
         f"data.imbalance_ratio must be >= 1 (n_max / n_min), got {cfg.data.imbalance_ratio}"),
        (cfg.data.profile in ("exp", "step"), f"data.profile must be exp or step, got {cfg.data.profile!r}"),
        (cfg.data.n_max is None or cfg.data.n_max >= 1, f"data.n_max must be >= 1, got {cfg.data.n_max}"),
        (cfg.data.num_classes is None or cfg.data.num_classes >= 2,
         f"data.num_classes must be >= 2, got {cfg.data.num_classes}"),
        (cfg.data.val_per_class >= 0, f"data.val_per_class must be >= 0, got {cfg.data.val_per_class}"),
        (cfg.data.aug_groups >= 0, f"data.aug_groups must be >= 0 (0: one draw per image), got {cfg.data.aug_groups}"),
        (cfg.train.epochs >= 1, f"train.epochs must be >= 1, got {cfg.train.epochs}"),
        (cfg.train.amp in ("auto", "bf16", "fp16", "off"),
         f"train.amp must be auto, bf16, fp16 or off, got {cfg.train.amp!r}"),
        (cfg.optim.batch_size >= 1, f"optim.batch_size must be >= 1, got {cfg.optim.batch_size}"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (cfg.model.head in ("linear", "cosine"), f"model.head must be linear or cosine, got {cfg.model.head!r}"),
        (cfg.model.channels_last in ("auto", "on", "off"), "model.channels_last must be auto, on or off"),
        (cfg.method.tau_b >= 0, f"method.tau_b must be >= 0, got {cfg.method.tau_b}"),
        (cfg.method.beta >= 0, f"method.beta must be >= 0, got {cfg.method.beta}"),
        (cfg.method.s > 0, f"method.s must be > 0, got {cfg.method.s}"),
        (cfg.method.gamma >= 0, f"method.gamma must be >= 0, got {cfg.method.gamma}"),
        (cfg.method.tau_m >= 0, f"method.tau_m must be >= 0, got {cfg.method.tau_m}"),
        (cfg.eval.select_on in ("val", "test", "last"),
         f"eval.select_on must be val, test or last, got {cfg.eval.select_on!r}"),
        (cfg.eval.select_on != "val" or cfg.data.val_per_class >= 1 or cfg.data.subset_file is not None,
         "eval.select_on val needs a validation split: set data.val_per_class >= 1 (or eval.select_on test)"),
        (cfg.eval.n is None or cfg.eval.n >= 1, f"eval.n must be >= 1, got {cfg.eval.n}"),
        (cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}"),
        (set(cfg.eval.checkpoints) <= {"best", "last"} and len(cfg.eval.checkpoints) >= 1,
         f"eval.checkpoints must be best and/or last, got {list(cfg.eval.checkpoints)}"),
        (0 < cfg.eval.head_frac < 1 and 0 < cfg.eval.tail_frac < 1 and cfg.eval.head_frac + cfg.eval.tail_frac <= 1,
         "eval.head_frac and eval.tail_frac must be in (0, 1) and sum to at most 1"),
        (cfg.data.sampler in ("uniform", "balanced"),
         f"data.sampler must be uniform or balanced, got {cfg.data.sampler!r}"),
        (0 <= cfg.data.resample_start < 1, f"data.resample_start must be in [0, 1), got {cfg.data.resample_start}"),
        (cfg.method.outer_loss in ("auto", "ce", "bsl", "focal", "cb", "ldam", "la", "cdt", "focal_sigmoid",
                                   "cb_focal_sigmoid"),
         "method.outer_loss must be auto, ce, bsl, focal, cb, ldam, la, cdt, focal_sigmoid or cb_focal_sigmoid, "
         f"got {cfg.method.outer_loss!r}"),
        ((cfg.method.outer_loss == "auto" and cfg.method.reweight == "none")
         or cfg.method.name not in ("mart", "robal", "reat"),
         f"method.outer_loss and method.reweight apply to AT-style methods and trades, not {cfg.method.name!r}"),
        (cfg.method.reweight in ("none", "inverse", "effective"),
         f"method.reweight must be none, inverse or effective, got {cfg.method.reweight!r}"),
        (cfg.method.reweight == "none" or cfg.method.outer_loss != "cb",
         "method.outer_loss cb already weights by effective numbers: leave method.reweight none"),
        (0 <= cfg.method.drw_start < 1, f"method.drw_start must be in [0, 1), got {cfg.method.drw_start}"),
        (cfg.method.focal_gamma >= 0, f"method.focal_gamma must be >= 0, got {cfg.method.focal_gamma}"),
        (0 <= cfg.method.cb_beta < 1, f"method.cb_beta must be in [0, 1), got {cfg.method.cb_beta}"),
        (cfg.method.ldam_max_m >= 0 and cfg.method.ldam_s > 0, "method.ldam_max_m must be >= 0 and method.ldam_s > 0"),
        (cfg.method.cdt_gamma >= 0, f"method.cdt_gamma must be >= 0, got {cfg.method.cdt_gamma}"),
    ]
    _require(checks)
    _check_protocol_fields(cfg)
    _check_outer_losses(cfg)
    _check_eval_protocol(cfg)
    _check_streaming(cfg)
    _check_awp_ema(cfg)
    _check_taet(cfg)
    _check_robustlt(cfg)
    _check_threat_model(cfg)


def _check_streaming(cfg: Config) -> None:
    """The streamed data set's fields: a crop size that leaves a feature map, workers >= 0."""
    d = cfg.data
    _require([
        (d.image_size is None or d.name == "imagenet-lt",
         f"data.image_size applies to imagenet-lt only ({d.name} images have their own size)"),
        (d.image_size is None or 8 <= d.image_size <= 1024,
         f"data.image_size must be in [8, 1024], got {d.image_size}"),
        (d.workers is None or d.workers >= 0,
         f"data.workers must be >= 0 (0: decode in the main process), got {d.workers}"),
    ])


def _check_threat_model(cfg: Config) -> None:
    """The norm, the per-class budgets and CFA's calibration (ltadv.threat, methods/cfa.py)."""
    a, m = cfg.attack, cfg.method
    norms = ("linf", "l2")
    eval_norm = cfg.eval.norm or a.norm
    checks = [
        (a.norm in norms, f"attack.norm must be linf or l2, got {a.norm!r}"),
        (cfg.eval.norm is None or cfg.eval.norm in norms, f"eval.norm must be linf or l2, got {cfg.eval.norm!r}"),
        (all(math.isfinite(e) and e >= 0 for e in a.class_eps),
         f"attack.class_eps must be finite numbers >= 0, got {list(a.class_eps)}"),
        (a.norm != "l2" or a.init != "uniform_plus",
         "attack.init uniform_plus (x + U[0, eps)) is L-inf only: use uniform, normal or zero with attack.norm l2"),
        (eval_norm != "l2" or "uniform_plus" not in (cfg.eval.fgsm_init, cfg.eval.pgd_init, cfg.eval.mim_init),
         "eval starts uniform_plus are L-inf only: use uniform, normal or zero with an l2 evaluation"),
        (m.cfa_lambda1 >= 0 and m.cfa_lambda2 >= 0,
         f"method.cfa_lambda1 and method.cfa_lambda2 must be >= 0, got {m.cfa_lambda1}, {m.cfa_lambda2}"),
        (m.cfa_begin >= 0, f"method.cfa_begin must be >= 0 (a 0-based epoch), got {m.cfa_begin}"),
        (m.cfa_acc in ("class", "total"), f"method.cfa_acc must be class or total, got {m.cfa_acc!r}"),
        (m.name != "trades_cfa" or (m.outer_loss == "auto" and m.reweight == "none"),
         "trades_cfa trains with CFA's own weighted CE + KL: leave method.outer_loss auto and method.reweight none"),
        (not m.robustlt or (a.norm == "linf" and not a.class_eps),
         "method.robustlt sets its own L-inf per-class budgets: use it with attack.norm linf and no attack.class_eps"),
    ]
    _require(checks)


def _check_protocol_fields(cfg: Config) -> None:
    """Range checks of the fields the reference protocols use (subset draw, schedule, selection)."""
    d, o, e = cfg.data, cfg.optim, cfg.eval
    checks = [
        (d.subset_draw in ("ltadv", "ldam"), f"data.subset_draw must be ltadv or ldam, got {d.subset_draw!r}"),
        (d.subset_file_val in ("val", "train"),
         f"data.subset_file_val must be val or train, got {d.subset_file_val!r}"),
        (d.subset_seed is None or 0 <= d.subset_seed < 2**32,
         f"data.subset_seed must be in [0, 2^32), got {d.subset_seed}"),
        (o.milestone_unit in ("fraction", "epoch"),
         f"optim.milestone_unit must be fraction or epoch, got {o.milestone_unit!r}"),
        (o.milestone_unit == "epoch" or all(0 <= m <= 1 for m in o.milestones),
         "optim.milestones are fractions of the epochs in [0, 1] (or set optim.milestone_unit epoch)"),
        (o.milestone_unit == "fraction" or all(m >= 1 for m in o.milestones),
         "optim.milestones are 1-based epoch numbers >= 1 with optim.milestone_unit epoch"),
        (o.lr_schedule in ("step", "compound"), f"optim.lr_schedule must be step or compound, got {o.lr_schedule!r}"),
        (o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}"),
        (cfg.train.max_batches is None or cfg.train.max_batches >= 1,
         f"train.max_batches must be >= 1, got {cfg.train.max_batches}"),
        (e.max_batches is None or e.max_batches >= 1, f"eval.max_batches must be >= 1, got {e.max_batches}"),
        (cfg.train.log_every >= 0, f"train.log_every must be >= 0 seconds, got {cfg.train.log_every}"),
        (e.select_from >= 1, f"eval.select_from must be >= 1 (a 1-based epoch), got {e.select_from}"),
        (e.select_ties in ("first", "last"), f"eval.select_ties must be first or last, got {e.select_ties!r}"),
        (cfg.method.scale_in in ("loss", "head"), f"method.scale_in must be loss or head, got {cfg.method.scale_in!r}"),
    ]
    _require(checks)


def _check_outer_losses(cfg: Config) -> None:
    """The class-balanced sigmoid focal loss carries its own weights, as ``cb`` does."""
    if cfg.method.reweight != "none" and cfg.method.outer_loss == "cb_focal_sigmoid":
        raise ConfigError("method.outer_loss cb_focal_sigmoid already weights by effective numbers: "
                          "leave method.reweight none")


def _check_eval_protocol(cfg: Config) -> None:
    """Range checks of the test-attack details (``eval.alpha``, the starts)."""
    e = cfg.eval
    if e.alpha is not None and not e.alpha > 0:
        raise ConfigError(f"eval.alpha must be > 0 (or null: eps / 4), got {e.alpha}")
    starts = ("zero", "uniform", "normal", "uniform_plus")
    for name in ("fgsm_init", "pgd_init", "mim_init"):
        if getattr(e, name) not in starts:
            raise ConfigError(f"eval.{name} must be {', '.join(starts[:-1])} or {starts[-1]}, got {getattr(e, name)!r}")


# REAT's loss counts the batch's predictions (its epoch state): a proxy call would count every batch twice.
AWP_EXCLUDED = ("reat",)


def _check_awp_ema(cfg: Config) -> None:
    """Range checks of AWP (``method.awp*``) and the weight average (``train.ema_*``); finiteness is
    :func:`_check_finite`'s."""
    m, t = cfg.method, cfg.train
    _require([
        (m.awp_gamma > 0, f"method.awp_gamma must be > 0, got {m.awp_gamma}"),
        (m.awp_warmup >= 0, f"method.awp_warmup must be >= 0, got {m.awp_warmup}"),
        (not m.awp or m.name not in AWP_EXCLUDED,
         f"method.awp does not compose with {m.name!r}: its loss keeps state, which the proxy step would "
         f"update twice per batch"),
        (0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1) (0: off), got {t.ema_decay}"),
        (t.ema_warmup >= 0, f"train.ema_warmup must be >= 0, got {t.ema_warmup}"),
        (t.ema_bn in ("ema", "copy"), f"train.ema_bn must be ema or copy, got {t.ema_bn!r}"),
    ])


def _check_taet(cfg: Config) -> None:
    """Range checks of TAET's schedule and HARL weights (``method.taet_*``)."""
    m = cfg.method
    _require([(m.taet_ce_epochs >= 0, f"method.taet_ce_epochs must be >= 0, got {m.taet_ce_epochs}")]
             + [(getattr(m, k) >= 0, f"method.{k} must be >= 0, got {getattr(m, k)}")
                for k in ("taet_alpha", "taet_beta", "taet_gamma")])


# Methods whose attack is not the base PGD on CE (TRADES: KL; REAT: re-weighted CE): the wrapper is not wired there.
ROBUSTLT_EXCLUDED = ("trades", "reat")


def _check_robustlt(cfg: Config) -> None:
    """Range checks of RobustLT's class-wise wrapper (``method.robustlt*``)."""
    m = cfg.method
    _require([
        (0 <= m.robustlt_alpha <= 1, f"method.robustlt_alpha must be in [0, 1], got {m.robustlt_alpha}"),
        (m.robustlt_beta >= 0, f"method.robustlt_beta must be >= 0, got {m.robustlt_beta}"),
        (not m.robustlt or m.name not in ROBUSTLT_EXCLUDED,
         f"method.robustlt wraps the base PGD-CE attack; {m.name!r} attacks with its own loss"),
    ])
