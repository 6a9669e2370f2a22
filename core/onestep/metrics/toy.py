"""Distribution-level metrics that need no feature network: Sinkhorn divergence (geomloss) and
per-mode coverage for mixtures with known modes."""
from __future__ import annotations

import attrs
import torch

from ..interfaces import EvalContext, Metric


@attrs.define
class SinkhornDivergenceConfig:
    blur: float = 0.05  # entropic blur in data units (geomloss: epsilon = blur ** p)
    scaling: float = 0.8
    max_points: int = 4000  # subsample both sets to at most this many points


def sinkhorn_divergence(a: torch.Tensor, b: torch.Tensor, blur: float = 0.05, scaling: float = 0.8) -> float:
    """Debiased Sinkhorn divergence S_eps(a, b) between two point clouds (flattened), p = 2; on the
    GPU when there is one (an N x N cost matrix and tens of iterations over it)."""
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True, backend="tensorized")
    a = a.reshape(len(a), -1).float()
    if a.device.type == "cpu" and torch.cuda.is_available():
        a = a.cuda()
    b = b.reshape(len(b), -1).float().to(a.device)
    with torch.no_grad():
        return float(loss(a, b))


class SinkhornDivergence(Metric):
    """Debiased Sinkhorn divergence between samples and held-out data (lower is better; the
    divergence of two independent data samples of the same size is the floor)."""

    name = "sinkhorn"
    Config = SinkhornDivergenceConfig

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        n = min(len(ctx.samples), len(ctx.reference), self.config.max_points)
        g = torch.Generator().manual_seed(0)
        a = ctx.samples[torch.randperm(len(ctx.samples), generator=g)[:n]]
        b = ctx.reference[torch.randperm(len(ctx.reference), generator=g)[:n]]
        return {"sinkhorn": sinkhorn_divergence(a, b, self.config.blur, self.config.scaling)}


@attrs.define
class ModeCoverageConfig:
    radius_std: float = 3.0  # a sample belongs to a mode when within radius_std * std of it
    min_mass_fraction: float = 0.1  # a mode is covered when it gets >= this x its true weight


def mode_masses(samples: torch.Tensor, modes: torch.Tensor, radius: float) -> tuple[torch.Tensor, float]:
    """Fraction of samples assigned to each mode (nearest mode within ``radius``) and the
    fraction of samples assigned to none."""
    x = samples.reshape(len(samples), -1).float()
    m = modes.reshape(len(modes), -1).float()
    d = torch.cdist(x, m)
    dmin, idx = d.min(1)
    inside = dmin <= radius
    counts = torch.bincount(idx[inside], minlength=len(m)).float()
    return counts / len(x), float(1 - inside.float().mean())


class ModeCoverage(Metric):
    """Per-mode mass of samples on mixtures with known modes: modes covered, total variation
    between sample and true mode weights, and the fraction of off-mode samples."""

    name = "mode-coverage"
    Config = ModeCoverageConfig
    applies_to = ("points",)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        modes, weights = ctx.source.modes(), ctx.source.mode_weights()
        if modes is None or weights is None:
            return {}
        std = getattr(ctx.source.config, "std", None)
        md = torch.cdist(modes.float(), modes.float())
        md = md + torch.eye(len(modes)) * 1e9
        radius = 0.5 * float(md.min()) if len(modes) > 1 else float("inf")
        if std is not None:
            radius = min(radius, self.config.radius_std * std)
        mass, off = mode_masses(ctx.samples, modes, radius)
        w = weights / weights.sum()
        assigned = mass / mass.sum().clamp_min(1e-12)
        covered = (mass >= self.config.min_mass_fraction * w).sum()
        out = {
            "modes_covered": float(covered),
            "modes_total": float(len(modes)),
            "mode_weight_tv": float(0.5 * (assigned - w).abs().sum()),
            "off_mode_fraction": off,
        }
        out.update({f"mode_mass_{k}": float(v) for k, v in enumerate(mass)})
        return out
