"""One step of conditional GAN training, shared by the ZDC training loop and the synthetic
benchmarks, so that every regularizer is compared under exactly the step that trains the model:
non-saturating losses, an optional R1 penalty on real samples, and the diversity regularizer on
pairs of samples of one condition."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zdc_sim import regularizers


def discriminator_loss(discriminator, real: torch.Tensor, fake: torch.Tensor, condition: torch.Tensor,
                       r1_weight: float = 0.0, r1_discriminator=None) -> torch.Tensor:
    """Non-saturating loss of real against fake, plus r1_weight / 2 * |grad_real D|^2 when > 0
    (the caller folds lazy regularisation into the weight). `r1_discriminator`: the unwrapped
    module for the penalty's pass when `discriminator` is a DDP wrapper (one wrapped pass a step)."""
    batch = len(real)
    logits, _ = discriminator(torch.cat([real, fake]), torch.cat([condition, condition]))
    loss = F.softplus(-logits[:batch]).mean() + F.softplus(logits[batch:]).mean()
    if r1_weight > 0:
        real_grad = real.detach().requires_grad_(True)
        out, _ = (r1_discriminator or discriminator)(real_grad, condition)
        (grad,) = torch.autograd.grad(out.sum(), real_grad, create_graph=True)
        loss = loss + r1_weight / 2 * grad.pow(2).flatten(1).sum(1).mean()
    return loss


@dataclass
class GeneratorLosses:
    adversarial: torch.Tensor
    regularizer: torch.Tensor


def generator_losses(discriminator, regularizer: regularizers.Regularizer, fakes: torch.Tensor,
                     condition: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor | None, sdi_weights: torch.Tensor,
                     real: torch.Tensor, compared: torch.Tensor | None = None) -> GeneratorLosses:
    """Adversarial loss of `fakes` (2B samples: z1's then z2's, or B without a pair) and the
    regularizer's term. `compared` is what the regularizer measures distances on (default the
    fakes; the ZDC model passes responses before photon statistics); IID sees the real batch."""
    batch = len(z1)
    pair = z2 is not None
    logits, embedding = discriminator(fakes, torch.cat([condition, condition]) if pair else condition)
    compared = fakes if compared is None or regularizer.uses_real else compared
    f1, f2 = compared.split(batch) if pair else (compared, None)
    e1, e2 = (embedding.split(batch) if pair else (embedding, None)) if regularizer.uses_embedding else (None, None)
    term = regularizer(regularizers.DiversityPair(z1, z2, f1, f2, sdi_weights, e1, e2, condition=condition,
                                                  real=real if regularizer.uses_real else None))
    return GeneratorLosses(F.softplus(-logits).mean(), term)
