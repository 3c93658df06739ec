"""Classifier heads: linear, and RoBal's cosine classifier.

Cosine head from Wu et al., "Adversarial Robustness under Long-Tailed Distribution", CVPR 2021,
arXiv 2104.02703, Eq. (3): h_i = s * W_i^T f / ((||W_i|| + gamma) ||f||); as in the RoBal code the
weight norm gets a small gamma (1/32). The scale s is applied here; class biases and margins are the
loss's business (they are training-time adjustments).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LinearHead(nn.Linear):
    pass


class CosineHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, s: float = 10.0, gamma: float = 1 / 32):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.s = s
        self.gamma = gamma

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.gamma)
        return self.s * F.linear(F.normalize(f, dim=1), w)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, classes={self.weight.shape[0]}, s={self.s}, gamma={self.gamma}"
