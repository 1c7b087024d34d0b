"""Generator loss terms besides the adversarial one and the diversity regularizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zdc_sim.geometry import channel_sums


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(v.pow(2).sum(1) + 1e-12)  # finite gradient where two samples coincide


def energy_score(f1: torch.Tensor, f2: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over conditions of 1/2 (|f1 - y| + |f2 - y|) - 1/2 |f1 - f2| for two generated samples
    f1, f2 (N, D) and one real y (N, D) of each condition. A proper scoring rule: in expectation it
    is lowest only when the generated distribution is the real one, so it punishes too much spread
    as much as too little (unlike a diversity term, which can only raise it)."""
    return (0.5 * (_norm(f1 - real) + _norm(f2 - real)) - 0.5 * _norm(f1 - f2)).mean()


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
        loss = loss + channel_weight * energy_score(torch.log1p(s1), torch.log1p(s2), real_log_channels)
    if linear_weight > 0:
        if units is None:
            raise ValueError("the linear channel score needs each particle's units (N,)")
        real_linear = torch.expm1(real_log_channels) / units[:, None]
        loss = loss + linear_weight * energy_score(s1 / units[:, None], s2 / units[:, None], real_linear)
    if image_weight > 0:
        p1, p2, py = (F.avg_pool2d(f, 4).flatten(1) for f in (f1, f2, real))
        loss = loss + image_weight * energy_score(p1, p2, py)
    return loss
