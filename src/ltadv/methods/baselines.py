"""Named long-tail baselines with AT (RoBal's baseline suite): each is AT plus a method preset
(``ltadv/presets/methods/<name>.yaml``) that sets the config keys below, so ``--method at_focal`` and
``--method at --method.outer_loss focal`` train the same thing. The losses live in ``losses_lt``,
the outer-loss switch in ``methods/outer.py``, the sampler in ``data/sampler.py``.

| name          | preset                                                        | reference |
|---------------|---------------------------------------------------------------|-----------|
| ``at_rs``     | ``data.sampler balanced`` (class-balanced re-sampling, whole run) | Shen et al. 2016; RoBal rs-whole |
| ``at_drs``    | ``data.sampler balanced``, ``data.resample_start 0.8`` (deferred) | Cao et al. 2019 (DRS) |
| ``at_rw``     | ``method.reweight inverse``                                   | RoBal rw |
| ``at_focal``  | ``method.outer_loss focal`` (gamma 2)                         | Lin et al., arXiv 1708.02002 |
| ``at_cb``     | ``method.outer_loss cb`` (beta 0.9999)                        | Cui et al., arXiv 1901.05555 |
| ``at_ldam_drw`` | ``method.outer_loss ldam``, ``reweight effective``, ``drw_start 0.8`` | Cao et al. 2019 |
| ``at_la``     | ``method.outer_loss la`` (tau 1)                              | Menon et al., arXiv 2007.07314 |
| ``at_cdt``    | ``method.outer_loss cdt`` (gamma 0.3)                         | Ye et al., arXiv 2001.01385 |
"""

from __future__ import annotations

from . import METHODS
from .at import AT

BASELINES = ("at_rs", "at_drs", "at_rw", "at_focal", "at_cb", "at_ldam_drw", "at_la", "at_cdt")

for _name in BASELINES:
    METHODS[_name] = AT  # the preset carries the difference; the training objective is AT's
