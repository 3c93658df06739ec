"""The reference-style baseline ``ltadv bench`` compares against: what the AT-BSL, RoBal and TRADES
scripts run, written once so the comparison has a fixed other side.

A per-image PIL pipeline (RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor) behind a torch
DataLoader, fp32, NCHW; training: PGD via ``torch.autograd.grad`` with the model in eval mode, then
BSL on x' in train mode and an SGD step; PGD-20 evaluation in the scripts' ``_pgd_whitebox``
schedule. Nothing in the library imports this module.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ltadv.losses import balanced_softmax_loss


class PILDataset(torch.utils.data.Dataset):
    """The reference scripts' per-image path: uint8 HWC arrays -> PIL -> transforms -> tensor."""

    def __init__(self, x_hwc: np.ndarray, y: np.ndarray):
        from torchvision import transforms

        self.x, self.y = x_hwc, y
        self.tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor()])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def reference_pgd(model, x, y, eps, alpha, steps):
    """The reference training attack (AT-BSL's ``pgd_loss``): start x + 0.001 N(0, 1), autograd.grad
    w.r.t. x' only, fp32, parameters left trainable."""
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def reference_pgd_eval(model, x, y, eps, alpha, steps) -> float:
    """Robust accuracy under PGD-``steps`` run in the reference scripts' evaluation schedule (AT-BSL's
    ``pgd_attack._pgd_whitebox`` and ``eval.py``; TRADES' and RoBal's are the same): a clean forward
    on an input that requires grad, then per step ``loss.backward()`` through the eval-mode model
    with its parameters left trainable (their gradients are computed and accumulated, then unused),
    and a last forward on x'. ltadv runs the same attack with gradients to the input only.
    """
    x = x.detach().requires_grad_(True)
    model(x).argmax(1)  # the reference's clean error count; its graph is built and dropped
    x_adv = (x.detach() + torch.empty_like(x).uniform_(-eps, eps)).requires_grad_(True)
    for _ in range(steps):
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        x_adv = x_adv.detach() + alpha * x_adv.grad.sign()
        delta = torch.clamp(x_adv - x.detach(), -eps, eps)
        x_adv = torch.clamp(x.detach() + delta, 0, 1).requires_grad_(True)
    acc = float((model(x_adv).argmax(1) == y).float().mean())
    model.zero_grad(set_to_none=True)
    return acc


def reference_train_step(model, opt, x, y, counts, eps, alpha, steps):
    model.eval()
    x_adv = reference_pgd(model, x, y, eps, alpha, steps)
    model.train()
    opt.zero_grad()
    loss = balanced_softmax_loss(model(x_adv), y, counts)
    loss.backward()
    opt.step()
    return loss
