"""Generator loss terms besides the adversarial one and the diversity regularizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zdc_sim.errors import DataError
from zdc_sim.geometry import channel_sums


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis, with a finite gradient where two samples coincide."""
    return torch.sqrt(v.pow(2).sum(-1) + 1e-12)


def _pair_score(f1: torch.Tensor, f2: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The energy score of two generated samples (N, D) each against one real (N, D), mean over N."""
    return energy_score(torch.stack([f1, f2], 1), real[:, None]).mean()


def energy_score(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Energy score per condition of K >= 2 generated samples (N, K, D) against R >= 1 real ones
    (N, R, D): mean |g - y| - 1/2 mean over distinct pairs |g - g'|, (N,). A proper scoring rule:
    in expectation it is lowest only when the generated distribution is the real one, so it
    punishes too much spread as much as too little (unlike a diversity term, which can only
    raise it). The one score of the project: the GAN loss and the epoch-end refit both use it."""
    first, second = torch.triu_indices(generated.shape[1], generated.shape[1], 1, device=generated.device)
    to_real = _norm(generated[:, :, None] - real[:, None, :]).mean((1, 2))
    spread = _norm(generated[:, first] - generated[:, second]).mean(1)  # distinct pairs only
    return to_real - 0.5 * spread


def energy_score_loss(fakes: torch.Tensor, real: torch.Tensor, real_log_channels: torch.Tensor,
                      channel_weight: float, image_weight: float, linear_weight: float = 0.0,
                      units: torch.Tensor | None = None) -> torch.Tensor:
    """fakes (2N, 1, 44, 44): two generated log(1 + counts) per condition (first N, then N);
    real (N, 1, 44, 44) and its log(1 + channel sums) (N, 5). Weighted energy scores on the log
    channel sums, on the 4 x 4-pooled log image (where the shower lies and how it spreads) and on
    the channel sums divided by `units` (N,), each particle's typical shower in counts: the linear
    scale the fidelity metric weighs, where the log score under-weighs the skew of the totals and
    the far towers."""
    f1, f2 = fakes.split(len(real))
    loss = fakes.new_zeros(())
    if channel_weight > 0 or linear_weight > 0:
        s1, s2 = (channel_sums(torch.expm1(f[:, 0]).clamp_min(0)) for f in (f1, f2))
    if channel_weight > 0:
        loss = loss + channel_weight * _pair_score(torch.log1p(s1), torch.log1p(s2), real_log_channels)
    if linear_weight > 0:
        if units is None:
            raise DataError("the linear channel score needs each particle's units (N,)")
        real_linear = torch.expm1(real_log_channels) / units[:, None]
        loss = loss + linear_weight * _pair_score(s1 / units[:, None], s2 / units[:, None], real_linear)
    if image_weight > 0:
        p1, p2, py = (F.avg_pool2d(f, 4).flatten(1) for f in (f1, f2, real))
        loss = loss + image_weight * _pair_score(p1, p2, py)
    return loss
