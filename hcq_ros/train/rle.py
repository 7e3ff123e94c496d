"""Residual log-likelihood estimation (RLE; Li et al., ICCV 2021) for 2-D point regression.

The model predicts a location mu and a scale sigma per point. The normalised residual x = (gt - mu) / sigma is
scored under a density p(x) = Q(x) * G(x): Q is a fixed unit Laplace per axis (the prior the residual is
expected to roughly follow) and G a learnt correction, a small RealNVP normalising flow (log G = flow log-
likelihood). The change of variables from gt to x adds log sigma, so the per-point loss is

    loss = -log G(x) - log Q(x) + log sigma_x + log sigma_y,    -log Q(x) = 2 log 2 + |x_x| + |x_y|.

Minimising it moves mu towards gt (the residual term) while sigma learns the expected error, so 1 - sigma
serves as a confidence. The flow is trained jointly (its parameters live in the criterion) and is not needed
at inference.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class AffineCoupling(nn.Module):
    """RealNVP coupling on 2-D: the coordinate where mask == 0 is scaled and shifted by functions of the other.

    inverse(x [N, 2]) -> (z [N, 2], log|det dz/dx| [N]) maps data towards the standard-normal latent.
    """

    def __init__(self, mask: tuple[float, float], hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tensor(mask, dtype=torch.float32))
        self.scale_net = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                       nn.LeakyReLU(), nn.Linear(hidden, 2), nn.Tanh())
        self.shift_net = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                       nn.LeakyReLU(), nn.Linear(hidden, 2))
        for net in (self.scale_net, self.shift_net):
            for layer in net:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight, gain=0.01)
                    nn.init.zeros_(layer.bias)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = x * self.mask
        free = 1.0 - self.mask
        scale = self.scale_net(kept) * free
        shift = self.shift_net(kept) * free
        z = kept + free * (x - shift) * torch.exp(-scale)
        return z, -scale.sum(dim=-1)


class RealNVP2D(nn.Module):
    """Normalising flow over 2-D points: alternating affine couplings onto a standard normal.

    log_prob(x [N, 2]) -> [N] log-density. Starts close to the identity map (near-zero init).
    """

    def __init__(self, hidden: int = 64, num_couplings: int = 6) -> None:
        super().__init__()
        if num_couplings < 2:
            raise ValueError(f"RealNVP2D needs >= 2 couplings (one per axis), got {num_couplings}")
        masks = [(0.0, 1.0) if i % 2 == 0 else (1.0, 0.0) for i in range(num_couplings)]
        self.couplings = nn.ModuleList(AffineCoupling(m, hidden) for m in masks)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"RealNVP2D.log_prob expects [N, 2], got {list(x.shape)}")
        log_det = x.new_zeros(x.shape[0])
        z = x
        for coupling in reversed(self.couplings):
            z, ld = coupling.inverse(z)
            log_det = log_det + ld
        log_normal = -0.5 * (z ** 2).sum(dim=-1) - math.log(2.0 * math.pi)
        return log_normal + log_det


class RLELoss(nn.Module):
    """Per-point RLE negative log-likelihood.

    forward(pred [N, 2], sigma [N, 2] in (0, 1), target [N, 2]) -> [N]; all coordinates in one unit (the caller
    decides which; HCQ uses units of the person's box scale).
    """

    def __init__(self, hidden: int = 64, num_couplings: int = 6, eps: float = 1e-6) -> None:
        super().__init__()
        self.flow = RealNVP2D(hidden, num_couplings)
        self.eps = eps

    def forward(self, pred: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != sigma.shape or pred.shape != target.shape or pred.dim() != 2 or pred.shape[1] != 2:
            raise ValueError(f"RLELoss expects pred, sigma, target all [N, 2], got {list(pred.shape)}, "
                             f"{list(sigma.shape)}, {list(target.shape)}")
        sigma = sigma + self.eps
        residual = (target - pred) / sigma
        log_g = self.flow.log_prob(residual)
        neg_log_q = 2.0 * math.log(2.0) + residual.abs().sum(dim=-1)
        return -log_g + neg_log_q + sigma.log().sum(dim=-1)
