"""Building what a run needs from its config: the device, the model (and its test-time view), mixed
precision, memory layouts; rebuilding a trained model from a run folder.

Everything here sits below the training loop and the evaluation of a run (``ltadv.train``,
``ltadv.run_eval``) and above the models, methods, data and checkpoint modules.
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import ema as weight_ema
from .config import Config, ConfigError, from_dict
from .data import AUGMENTATIONS, DATASETS, LTData
from .methods import METHODS
from .models import MODELS, Classifier, build_model, posthoc
from .registry import lookup
from .results import RECORD_KEYS, RESULT, read_record
from .rundir import CKPT_DIR


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``: a device that exists here, else a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r} is not available here")
    elif dev.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def check_names(cfg: Config) -> None:
    """Every registry name in the config exists (one clear error naming the bad one)."""
    lookup(DATASETS, cfg.data.name, "dataset")
    lookup(MODELS, cfg.model.name, "model")
    lookup(METHODS, cfg.method.name, "method")
    for a in cfg.data.aug:
        lookup(AUGMENTATIONS, a, "augmentation")
    check_attacks((*cfg.eval.attacks, cfg.eval.val_attack))


def check_attacks(names) -> None:
    """Every attack name exists and its optional dependency is installed (one clear line otherwise),
    checked before any folder is touched or any work is done."""
    from .attacks import ATTACKS

    for a in names:
        check = getattr(lookup(ATTACKS, a, "attack"), "check", None)
        if check is not None:
            check()


def autocast_for(cfg: Config, device: torch.device):
    mode = cfg.train.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode == "off":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def memory_layouts(cfg: Config, device: torch.device) -> tuple[bool, bool]:
    """(channels_last for the trained model, channels_last for the attack's eval view).

    ``auto``: the model goes channels_last on CUDA (tensor-core convolutions); the eval view also on
    CPU, where oneDNN's NHWC convolutions ran the attack step ~1.3x faster (benchmarks/).
    """
    mode = cfg.model.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda"), mode != "off"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_meta(data: LTData, method_head: str, normalize: bool = True) -> dict:
    """What a saved model needs to be rebuilt. ``normalize`` false: the reference models' raw [0, 1] input
    (the AT-BSL, RoBal, TRADES, MART and REAT networks have no normalisation layer), kept as mean 0, std 1."""
    mean, std = (list(data.mean), list(data.std)) if normalize else ([0.0] * data.in_channels, [1.0] * data.in_channels)
    return {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size,
            "head": method_head, "mean": mean, "std": std}


def head_scale(cfg: Config, head: str) -> float:
    """The cosine head's output scale: 1 when RoBal applies s inside its loss (``method.scale_in loss``,
    RoBal's CosPlus classifier with scale 1), else ``method.s``."""
    if head == "cosine" and cfg.method.name == "robal" and cfg.method.scale_in == "loss":
        return 1.0
    return cfg.method.s


def make_model(cfg: Config, meta: dict) -> Classifier:
    return build_model(cfg.model.name, meta["num_classes"], meta["in_channels"], meta["mean"], meta["std"],
                       head=meta["head"], s=head_scale(cfg, meta["head"]), gamma=cfg.method.gamma)


def focal_bias_init(model: Classifier, class_counts) -> None:
    """RoBal's FC_Classifier(focal_init=True): bias_i = -log((1 - pi_i) / pi_i), pi the training prior
    (Lin et al., "Focal Loss for Dense Object Detection", arXiv 1708.02002, Sec. 3.3's prior init)."""
    bias = getattr(model.head, "bias", None)
    if bias is None:
        raise ConfigError("model.focal_bias_init needs a linear head with a bias")
    prior = torch.as_tensor(list(class_counts), dtype=torch.float32)
    prior = prior / prior.sum()
    with torch.no_grad():
        bias.copy_(-torch.log((1 - prior) / prior))


def inference_model(model, cfg: Config, class_counts, head: str):
    """The model as it predicts and is attacked at test time: RoBal-N's post-hoc tau_p adjustment when set.

    With ``method.scale_in loss`` the head outputs cos; RoBal's PostProc classifier (the N configs' eval)
    multiplies by s before subtracting tau_p * log prior, so the wrapper does too. Without tau_p the
    cosine is used as is, as RoBal-R's eval config (CosPlus, scale 1) does.
    """
    return posthoc(model, class_counts, cfg.method.tau_p, scale=cfg.method.s / head_scale(cfg, head))


def build_checked(cfg: Config, meta, weights: Path, source: str) -> Classifier:
    """``make_model`` after checking ``meta`` and the tensor shapes in ``weights``' header against a
    model built on the meta device: a file claiming 10 million classes is refused before allocating."""
    ckpt.check_model_meta(meta, source)
    lookup(MODELS, cfg.model.name, "model")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in make_model(cfg, meta).state_dict().items()}
    ckpt.check_header(weights, shapes)
    return make_model(cfg, meta)


def load_run_model(run_dir: str | Path, which: str = "best", device=None) -> tuple[Classifier, dict]:
    """(eval-mode model, record) from a run folder's safetensors weights."""
    if which not in ("best", "last", *weight_ema.CHECKPOINTS):
        raise ValueError(f"which must be 'best', 'last', 'ema_best' or 'ema_last', got {which!r}")
    run_dir = Path(run_dir)
    record = read_record(run_dir, required=RECORD_KEYS)
    cfg = from_dict(record["config"])
    if which in weight_ema.CHECKPOINTS and not record.get("ema"):
        raise ckpt.CheckpointError(f"{run_dir} has no weight average ({which}): it was trained with train.ema_decay 0")
    weights = run_dir / CKPT_DIR / f"{which}.safetensors"
    model = build_checked(cfg, record["model_meta"], weights, f"run record {run_dir / RESULT}")
    ckpt.load_weights(weights, model)
    model = inference_model(model, cfg, record["class_counts"], record["model_meta"]["head"])  # RoBal-N's tau_p
    model = model.to(device or "cpu").eval()
    return model, record
