"""Named long-tail baselines with AT (RoBal's baseline suite and LDAM-DRW's): each is AT plus a method
preset (``ltadv/presets/methods/<name>.yaml``) that sets the config keys below, so ``--method at_focal``
and ``--method at --method.outer_loss focal`` train the same thing. The losses live in ``losses_lt``,
the outer-loss switch in ``methods/outer.py``, the sampler in ``data/sampler.py``.

Softmax forms follow LDAM-DRW (kaidic/LDAM-DRW); the ``*_sigmoid`` forms are RoBal's
(wutong16/Adversarial_Long-Tail, methods/losses_inclass.py FocalLoss(use_sigmoid=True) and CBLoss).
Re-weighting reduces as each source does (``losses_lt``): sum(w_y l) / sum(w_y) for softmax CE-type
losses (``F.cross_entropy(weight=w)``), sum(w_y l) / N for the sigmoid focal forms.

Name: preset; reference.

- ``at_rs``: ``data.sampler balanced`` (class-balanced re-sampling, whole run); Shen et al. 2016, RoBal rs-whole.
- ``at_drs``: ``data.sampler balanced``, ``data.resample_start 0.8`` (deferred); Cao et al. 2019 (DRS).
- ``at_rw``: ``method.reweight inverse``; inverse-frequency re-weighting (no RoBal config has it).
- ``at_focal``: ``method.outer_loss focal`` (softmax, gamma 2); Lin et al., arXiv 1708.02002, as
  LDAM-DRW's FocalLoss.
- ``at_cb``: ``method.outer_loss cb`` (softmax CE, beta 0.9999); Cui et al., arXiv 1901.05555, as
  LDAM-DRW's Reweight rule.
- ``at_focal_sigmoid``: ``method.outer_loss focal_sigmoid`` (gamma 2); RoBal outer_focal (FocalLoss).
- ``at_cb_focal_sigmoid``: ``method.outer_loss cb_focal_sigmoid`` (beta 0.9999, gamma 2); RoBal
  outer_CB and rw-fine (CBLoss).
- ``at_ldam``: ``method.outer_loss ldam`` (max_m 0.5, s 1), no re-weighting; RoBal outer_LDAM.
- ``at_ldam_drw``: ``at_ldam`` + ``method.reweight effective``, ``drw_start 0.8``; Cao et al.,
  arXiv 1906.07413.
- ``at_la``: ``method.outer_loss la`` (tau 1); Menon et al., arXiv 2007.07314, RoBal outer_logitadjust.
- ``at_cdt``: ``method.outer_loss cdt`` (gamma 0.3); Ye et al., arXiv 2001.01385, RoBal outer_CDT.
"""

from __future__ import annotations

from . import METHODS
from .at import AT

BASELINES = ("at_rs", "at_drs", "at_rw", "at_focal", "at_cb", "at_focal_sigmoid", "at_cb_focal_sigmoid",
             "at_ldam", "at_ldam_drw", "at_la", "at_cdt")

for _name in BASELINES:
    METHODS[_name] = AT  # the preset carries the difference; the training objective is AT's
