"""One line per registry name: what it is and where it comes from (``ltadv list``, ``--help``).

Kept by hand next to the registries because a docstring's first line is written for a programmer,
not for someone choosing a method; a test checks that every registered name has its line here.
"""

from __future__ import annotations

CATALOG: dict[str, dict[str, tuple[str, str]]] = {
    "method": {
        "at": ("PGD adversarial training: CE on PGD-10 examples", "Madry et al., ICLR 2018, arXiv 1706.06083"),
        "at_bsl": ("AT with the balanced softmax loss CE(z + tau_b log n) as the outer loss (the headline)",
                   "Yue et al., CVPR 2024, arXiv 2403.10073"),
        "trades": ("CE on clean + beta KL(p(x) || p(x')), attack on that KL", "Zhang et al., ICML 2019, arXiv 1901.08573"),
        "mart": ("boosted CE on x' + beta KL weighted by 1 - p_y(x)", "Wang et al., ICLR 2020, OpenReview rklOg6EFwS"),
        "robal": ("RoBal: balanced softmax + cosine head + class-aware margin + TRADES term, each switchable",
                  "Wu et al., CVPR 2021, arXiv 2104.02703"),
        "reat": ("REAT: re-balanced attack loss + BSL + tail-feature term", "Li, Xu and Zhang, arXiv 2307.10205"),
        "at_rs": ("AT with class-balanced re-sampling for the whole run", "Shen et al., ECCV 2016; RoBal's rs baseline"),
        "at_drs": ("AT with deferred class-balanced re-sampling (from 80% of the epochs)",
                   "Cao et al., NeurIPS 2019, arXiv 1906.07413"),
        "at_rw": ("AT re-weighted by inverse class frequency", "RoBal's rw baseline"),
        "at_focal": ("AT with the softmax focal loss, gamma 2 (LDAM-DRW's form)", "Lin et al., ICCV 2017, arXiv 1708.02002"),
        "at_focal_sigmoid": ("AT with the sigmoid (per-class binary) focal loss, gamma 2 (RoBal's form)",
                             "Lin et al., ICCV 2017; RoBal's outer_focal config"),
        "at_cb": ("AT with class-balanced CE, effective-number weights (beta 0.9999)",
                  "Cui et al., CVPR 2019, arXiv 1901.05555"),
        "at_cb_focal_sigmoid": ("AT with class-balanced sigmoid focal loss (RoBal's form)",
                                "Cui et al., CVPR 2019; RoBal's outer_CB config"),
        "at_ldam": ("AT with the LDAM loss (max margin 0.5), no re-weighting", "Cao et al., NeurIPS 2019; RoBal's outer_LDAM"),
        "at_ldam_drw": ("AT with LDAM and deferred re-weighting from 80% of the epochs",
                        "Cao et al., NeurIPS 2019, arXiv 1906.07413"),
        "at_la": ("AT with the logit-adjusted loss CE(z + tau log prior), tau 1", "Menon et al., ICLR 2021, arXiv 2007.07314"),
        "at_cdt": ("AT with class-dependent temperatures z_c / (n_max / n_c)^0.3", "Ye et al., arXiv 2001.01385"),
        "taet": ("TAET: clean CE for 40 epochs, then HARL (class-mean CE + deviation + rare-class terms) on PGD examples",
                 "Wang Yu-Hang et al., CVPR 2025, arXiv 2503.01924"),
        "at_cfa": ("AT + CFA: per-class eps (lambda_1 + train robust acc_k) * eps from the previous epoch",
                   "Wei et al., CVPR 2023, arXiv 2303.14460"),
        "trades_cfa": ("TRADES + CFA: per-class eps and per-class TRADES weight from train robust acc",
                       "Wei et al., CVPR 2023, arXiv 2303.14460"),
    },
    "model": {
        "resnet18": ("ResNet-18 for 32x32 inputs", "He et al., CVPR 2016, arXiv 1512.03385"),
        "preact_resnet18": ("pre-activation ResNet-18 (Tiny-ImageNet-LT in AT-BSL)", "He et al., ECCV 2016, arXiv 1603.05027"),
        "wrn34_10": ("WideResNet-34-10", "Zagoruyko & Komodakis, BMVC 2016, arXiv 1605.07146"),
        "small_cnn": ("three-convolution CNN for the 8x8 digits (the embedded default)", "ltadv"),
        "resnet50": ("torchvision's ResNet-50, untrained, 224 or 112 px (ImageNet-LT)", "He et al., CVPR 2016, arXiv 1512.03385"),
        "resnet50_small": ("ResNet-50 with a 3x3 stride-1 stem for 64 px (ImageNet-LT at low resolution)",
                           "He et al., CVPR 2016; ltadv"),
    },
    "aug": {
        "mixup": ("Mixup of image pairs and their labels", "Zhang et al., ICLR 2018, arXiv 1710.09412"),
        "cutout": ("Cutout, a square patch erased", "DeVries & Taylor, arXiv 1708.04552"),
        "cutmix": ("CutMix, a box pasted from another image, labels mixed by area", "Yun et al., ICCV 2019, arXiv 1905.04899"),
        "augmix": ("AugMix (torchvision v2 defaults)", "Hendrycks et al., ICLR 2020, arXiv 1912.02781"),
        "aua": ("AutoAugment, CIFAR-10 policy (AT-BSL's default)", "Cubuk et al., CVPR 2019, arXiv 1805.09501"),
        "ra": ("RandAugment, 2 ops at magnitude 8", "Cubuk et al., CVPR-W 2020, arXiv 1909.13719"),
        "ta": ("TrivialAugment (wide)", "Müller & Hutter, ICCV 2021, arXiv 2103.10158"),
    },
    "attack": {
        "clean": ("no attack: clean accuracy", ""),
        "fgsm": ("one signed-gradient step of eps", "Goodfellow et al., ICLR 2015, arXiv 1412.6572"),
        "pgd20": ("PGD-20 on CE, step eps/4, random start", "Madry et al., ICLR 2018, arXiv 1706.06083"),
        "cw": ("PGD-20 on the Carlini-Wagner margin loss (confidence 50)", "Carlini & Wagner, S&P 2017, arXiv 1608.04644"),
        "lsa": ("PGD-20 on CE of 10 x logits (a check against logit-adjustment masking)", "AT-BSL's eval.py"),
        "mim": ("momentum iterative attack, 20 steps", "Dong et al., CVPR 2018, arXiv 1710.06081"),
        "aa": ("official AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) as a resumable cascade",
               "Croce & Hein, ICML 2020, arXiv 2003.01690"),
        "aa_apgd": ("APGD-CE then APGD-T only (RoBal's 'AA')", "Croce & Hein, ICML 2020; RoBal's attacks/auto_attack.py"),
        "aa_torchattacks": ("torchattacks' AutoAttack (10 iterations per stage; AT-BSL's 'AA')", "torchattacks 3.5.1"),
    },
    "data": {
        "digits-lt": ("scikit-learn's 1,797 8x8 digits, long-tailed (embedded, no download)", "ltadv"),
        "cifar10-lt": ("CIFAR-10, long-tailed (IR 50 by default), from a local python-pickle folder",
                       "Krizhevsky 2009; Cui et al., CVPR 2019"),
        "cifar100-lt": ("CIFAR-100, long-tailed (IR 10 by default)", "Krizhevsky 2009; Cui et al., CVPR 2019"),
        "tiny-imagenet-lt": ("Tiny-ImageNet-200 at 64x64, long-tailed (IR 10)", "Le & Yang 2015"),
        "imagenet-lt": ("ImageNet-LT from its split files, streamed from disk (1,000 classes, 1280 -> 5 images)",
                        "Liu et al., CVPR 2019, arXiv 1904.05160"),
    },
}


def describe(kind: str, name: str) -> str:
    what, source = CATALOG.get(kind, {}).get(name, ("", ""))
    return f"{what} ({source})" if source else what


def registries() -> dict[str, dict]:
    """The registries by kind (the CLI's choices come from these)."""
    from .attacks import ATTACKS
    from .data import AUGMENTATIONS, DATASETS
    from .methods import METHODS
    from .models import MODELS

    return {"data": DATASETS, "model": MODELS, "method": METHODS, "aug": AUGMENTATIONS, "attack": ATTACKS}


def lines(kinds=("method", "model", "aug", "attack", "data")) -> list[str]:
    """``ltadv list``: one line per registered name, grouped by kind."""
    reg = registries()
    out = []
    titles = {"method": "methods (--method)", "model": "models (--model)", "aug": "augmentations (--aug)",
              "attack": "attacks (--attacks, eval.attacks)", "data": "datasets (--data)"}
    for kind in kinds:
        out.append(titles[kind])
        width = max(len(n) for n in reg[kind])
        for name in sorted(reg[kind]):
            out.append(f"  {name:{width}s}  {describe(kind, name)}")
    return out
