"""Debiased Sinkhorn divergence with geomloss's conventions (Feydy et al. 2019, Eq. 6)::

    S_eps(a, b) = OT_eps(a, b) - OT_eps(a, a) / 2 - OT_eps(b, b) / 2

with cost ``|x - y|^2 / 2`` and ``eps = blur**2`` (geomloss ``SamplesLoss("sinkhorn", p=2,
blur=blur, debias=True)``). In dual form ``S = <a, f_ab - p_a> + <b, g_ab - p_b>`` where
``p_a``, ``p_b`` are the symmetric potentials of OT(a, a) and OT(b, b).

Gradients w.r.t. the points follow from the envelope theorem, ``d OT_eps / d x_i =
a_i (x_i - T(x_i))``: the potentials are solved without autograd, then one last (Jacobi) update
is taken with the previous potentials held fixed, ``f`` through ``C(x, y.detach())`` and ``g``
through ``C(x.detach(), y)`` (and ``C(x, x.detach())`` for the symmetric terms), so each
point's gradient is counted once.
"""
from __future__ import annotations

import torch

from .solver import SinkhornResult, SinkhornSolver, squared_cost


def _soft_c_transform(cost: torch.Tensor, log_w: torch.Tensor, pot: torch.Tensor, eps: float, dim: int) -> torch.Tensor:
    """``-eps log sum_k w_k exp((pot_k - C) / eps)`` reducing over ``dim`` of cost (2: over j, 1: over i)."""
    h = (log_w + pot / eps).unsqueeze(3 - dim)
    return -eps * torch.logsumexp(h - cost / eps, dim=dim)


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == 2 else x


def debiased_potentials(
    x: torch.Tensor, y: torch.Tensor, blur: float = 0.05, scaling: float = 0.9, a: torch.Tensor | None = None,
    b: torch.Tensor | None = None, tol: float = 1e-4, max_iters: int = 2000,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(F, G, S)``: ``F = f_ab - p_a`` on x [B, N], ``G = g_ab - p_b`` on y [B, M] (what
    geomloss returns with ``potentials=True, debias=True``) and the divergence ``S`` [B]."""
    squeeze = x.dim() == 2
    x, y = _batched(x), _batched(y)
    eps = blur**2
    solver = SinkhornSolver(eps, scaling=scaling, tol=tol, max_iters=max_iters)
    ab: SinkhornResult = solver.solve(x, y, a, b)
    aa = solver.solve_symmetric(x, a)
    bb = solver.solve_symmetric(y, b)
    with torch.autocast(x.device.type, enabled=False):
        track = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
        c_x = squared_cost(x, y.detach()) if track else ab.cost
        c_y = squared_cost(x.detach(), y) if track else ab.cost
        c_xx = squared_cost(x, x.detach()) if track else aa.cost
        c_yy = squared_cost(y, y.detach()) if track else bb.cost
        f_ab = _soft_c_transform(c_x, ab.log_b, ab.g, eps, dim=2)
        g_ab = _soft_c_transform(c_y, ab.log_a, ab.f, eps, dim=1)
        p_a = _soft_c_transform(c_xx, aa.log_a, aa.f, eps, dim=2)
        p_b = _soft_c_transform(c_yy, bb.log_a, bb.f, eps, dim=2)
        fa, fb = ab.log_a.exp(), ab.log_b.exp()
        big_f = torch.where(fa > 0, f_ab - p_a, 0.0)
        big_g = torch.where(fb > 0, g_ab - p_b, 0.0)
        s = (fa * big_f).sum(1) + (fb * big_g).sum(1)
    if squeeze:
        return big_f[0], big_g[0], s[0]
    return big_f, big_g, s


def sinkhorn_divergence(
    x: torch.Tensor, y: torch.Tensor, blur: float = 0.05, scaling: float = 0.9, a: torch.Tensor | None = None,
    b: torch.Tensor | None = None, tol: float = 1e-4, max_iters: int = 2000,
) -> torch.Tensor:
    """Debiased Sinkhorn divergence S_eps between point clouds ``x`` [N, D] (or [B, N, D]) and
    ``y``: a scalar (or [B]), differentiable w.r.t. the points. Same value as geomloss's
    ``SamplesLoss("sinkhorn", p=2, blur=blur, debias=True)`` once both have converged."""
    return debiased_potentials(x, y, blur, scaling, a, b, tol, max_iters)[2]
