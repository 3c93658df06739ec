"""Fast eval-mode copies of a model for attacks and evaluation.

Adversarial training spends ~90% of its compute in the inner maximisation, which runs with the
model in eval mode (BN statistics frozen, as in the reference). In eval mode a BatchNorm after a
convolution is a fixed per-channel affine map, so it can be folded into the convolution's weights:
the attack then runs one kernel instead of conv + BN forward and backward. Together with the
channels_last layout this makes each attack step about 1.5x faster on CPU (benchmarks/, README),
with the same function up to float rounding.

:class:`EvalView` builds the folded copy once (torch.fx tracing + torch.fx's conv-BN fusion) and
refreshes its weights from the live model in place before each use, so it tracks training at the
cost of one pass over the weights per step.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.experimental.optimization import fuse, matches_module_pattern
from torch.nn.utils.fusion import fuse_conv_bn_weights


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) for every Conv2d whose only user is a BatchNorm2d, as torch.fx's fuse finds them."""
    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    pairs = []
    for node in traced.graph.nodes:
        if matches_module_pattern((nn.Conv2d, nn.BatchNorm2d), node, modules) and len(node.args[0].users) == 1 \
                and modules[node.target].track_running_stats:
            pairs.append((node.args[0].target, node.target))
    return pairs


class EvalView(nn.Module):
    """An eval-mode, BN-folded, optionally channels_last copy of ``model`` sharing no storage with it.

    Call :meth:`refresh` after the model's weights change (the training loop does it once per
    step); gradients flow to the input only (the copy's parameters are frozen).
    """

    def __init__(self, model: nn.Module, fold_bn: bool = True, channels_last: bool = False):
        super().__init__()
        source = copy.deepcopy(model).eval()
        self.pairs = conv_bn_pairs(source) if fold_bn else []
        self.net = fuse(source) if self.pairs else source
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()
        self._plain = [k for k in self.net.state_dict() if k.rsplit(".", 1)[0] not in {c for c, _ in self.pairs}]
        self._source = [model]  # a list, so the live model is not registered as a submodule
        self.refresh()

    def train(self, mode: bool = True):  # always in eval mode: that is the point of the view
        return super().train(False)

    @torch.no_grad()
    def refresh(self) -> EvalView:
        model = self._source[0]
        src_modules = dict(model.named_modules())
        dst_modules = dict(self.net.named_modules())
        src_state = model.state_dict()
        dst_state = self.net.state_dict()
        for k in self._plain:
            dst_state[k].copy_(src_state[k])
        for conv_name, bn_name in self.pairs:
            conv, bn = src_modules[conv_name], src_modules[bn_name]
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
            dst = dst_modules[conv_name]
            dst.weight.copy_(w)
            dst.bias.copy_(b)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


def eval_view(model: nn.Module, fold_bn: bool = True, channels_last: bool = False) -> nn.Module:
    """An :class:`EvalView` of ``model``, or the model itself when tracing fails (a model torch.fx
    cannot trace still works, just without the speed-up)."""
    if not fold_bn and not channels_last:
        return model
    try:
        return EvalView(model, fold_bn=fold_bn, channels_last=channels_last)
    except (fx.proxy.TraceError, TypeError, NotImplementedError):
        return model


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX_DEFAULT = 65536
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


@functools.cache
def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def heap_reuse_available() -> bool:
    """Whether :func:`keep_freed_memory` can act here (glibc, not switched off by LTADV_CPU_HEAP=0)."""
    import os

    return _glibc() is not None and os.environ.get("LTADV_CPU_HEAP", "1") != "0"


def keep_freed_memory(enable: bool = True) -> bool:
    """Let the CPU allocator reuse freed activation memory instead of returning it to the OS.

    glibc serves blocks of 32 MiB and more (a ResNet-18 activation at batch 128, 32x32) with a fresh
    ``mmap`` and unmaps them on free, so every attack step touches its activations through ~170k
    page faults: ~10% of a PGD step on 2 cores (benchmarks/, README). With mmap off and the trim
    threshold high, freed blocks stay in the heap and the next step reuses them (the role PyTorch's
    caching allocator plays on CUDA; PyTorch's CPU tuning guide suggests jemalloc/tcmalloc via
    LD_PRELOAD for the same reason, which cannot be switched on from inside a running process, so
    this calls glibc's own ``mallopt``). ``enable=False`` restores glibc's long-run defaults (mmap
    for blocks >= 32 MiB, trim above 64 MiB). Returns whether the setting was applied: False off
    glibc, or when the environment sets ``LTADV_CPU_HEAP=0``.
    """
    if not heap_reuse_available():
        return False
    libc = _glibc()
    if enable:
        settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)]
    else:
        settings = [(_M_MMAP_MAX, _GLIBC_MMAP_MAX_DEFAULT), (_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX),
                    (_M_TRIM_THRESHOLD, 2 * _GLIBC_MMAP_THRESHOLD_MAX)]
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
