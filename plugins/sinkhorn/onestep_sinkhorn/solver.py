"""Log-domain entropic optimal transport between point clouds (Sinkhorn with epsilon scaling).

Problem (Peyre & Cuturi 2019, Eq. 4.2; cost convention of geomloss for p = 2)::

    OT_eps(a, b) = min_pi <pi, C> + eps KL(pi | a x b),   C_ij = |x_i - y_j|^2 / 2

Dual potentials (f, g) satisfy, at the optimum (Eq. 4.30 of the same book, in log domain)::

    f_i = -eps log sum_j b_j exp((g_j - C_ij) / eps)
    g_j = -eps log sum_i a_i exp((f_i - C_ij) / eps)

and the plan is pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps). The solver alternates the two
updates (two logsumexp passes over the N x M cost per iteration), starting at a large
temperature and dividing it by ``scaling**2`` per iteration down to ``epsilon`` (epsilon
scaling, Schmitzer 2019; the same schedule as geomloss: blur shrinks by ``scaling`` per step),
then iterates at ``epsilon`` until the marginals are met to ``tol``.

Everything is computed in float32 whatever the input dtype (bf16 costs lose the differences
that ``exp(-C / eps)`` resolves). Problems are batched over a leading dimension (classes);
unequal group sizes are expressed with zero weights, which act as masks.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import attrs
import torch


PRECISIONS = ("fp32", "tf32", "bf16")


@contextmanager
def _tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def squared_cost(x: torch.Tensor, y: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``C[b, i, j] = |x[b, i] - y[b, j]|^2 / 2`` for ``x`` [B, N, D], ``y`` [B, M, D], in one
    GEMM: ``(|x|^2 + |y|^2) / 2 - x y^T`` (clamped at 0 against rounding), float32 out.

    Both clouds are first centred on their joint mean (the cost is translation invariant), which
    keeps the norms, and so the cancellation error of the expansion, small. ``precision`` picks
    the GEMM: ``fp32`` (exact float32, whatever the global TF32 switch says), ``tf32`` (tensor
    cores, 10-bit mantissa inputs) or ``bf16`` (bf16 inputs, float32 accumulation and output);
    the norms are always float32. ``tools/bench_sinkhorn.py`` measures what each costs in
    accuracy and time."""
    if precision not in PRECISIONS:
        raise ValueError(f"sinkhorn precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    x, y = x.float(), y.float()
    center = (x.sum(1, keepdim=True) + y.sum(1, keepdim=True)) / (x.shape[1] + y.shape[1])
    x, y = x - center, y - center
    half_norms = 0.5 * (x.pow(2).sum(-1).unsqueeze(2) + y.pow(2).sum(-1).unsqueeze(1))
    if precision == "bf16":
        xb, yt = x.bfloat16(), y.bfloat16().transpose(1, 2)
        if x.is_cuda:
            cross = torch.bmm(xb, yt, out_dtype=torch.float32)
        else:
            cross = torch.bmm(xb.float(), yt.float())
        return half_norms.sub_(cross).clamp_min_(0.0)
    with _tf32(precision == "tf32"):
        return torch.baddbmm(half_norms, x, y.transpose(1, 2), alpha=-1.0).clamp_min_(0.0)


def _log_weights(w: torch.Tensor | None, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """Log of normalised weights [B, n]; None means uniform; zeros (masked points) give -inf."""
    if w is None:
        return torch.full((batch, n), -math.log(n), device=device)
    w = w.float().to(device)
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(batch, n)
    if w.shape != (batch, n):
        raise ValueError(f"sinkhorn weights: expected shape {(batch, n)}, got {tuple(w.shape)}")
    return (w / w.sum(1, keepdim=True)).log()


def _logsumexp(a: torch.Tensor, dim: int) -> torch.Tensor:
    """``log sum exp`` over ``dim`` (no autograd: the solver's loop) with each term floored at
    ``exp(-80)`` times the largest: below float32 resolution of the sum, and it keeps CPUs off
    the slow path that ``exp`` takes for very negative arguments (several times slower cost passes).
    Masked (``-inf``) terms thus weigh ``e^-80`` instead of 0, which no float32 sum can see."""
    m = a.amax(dim, keepdim=True)
    return (a - m).clamp_min_(-80.0).exp_().sum(dim).log_().add_(m.squeeze(dim))


def _row_softmin(cost, h, inv_eps):
    """``-eps log sum_j exp(h_j - C_ij / eps)`` for h [B, M] -> [B, N]."""
    return -_logsumexp(h.unsqueeze(1) - cost * inv_eps, dim=2) / inv_eps


def _col_softmin(cost_t, h, inv_eps):
    """``-eps log sum_i exp(h_i - C_ij / eps)`` for h [B, N] -> [B, M], read from the
    transposed cost ``C^T`` [B, M, N] so that both passes reduce over contiguous rows (a
    strided reduction over ``C`` is slower: docs/results-history.md, #2026-11-23-wflow-sinkhorn)."""
    return _row_softmin(cost_t, h, inv_eps)


def _violation(f_new, f, log_a, inv_eps):
    return torch.where(log_a > -math.inf, (f_new - f).abs(), 0.0).amax() * inv_eps


def sinkhorn_steps(
    cost: torch.Tensor, cost_t: torch.Tensor, f: torch.Tensor, g: torch.Tensor, log_a: torch.Tensor,
    log_b: torch.Tensor, eps_steps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``len(eps_steps)`` alternating log-domain Sinkhorn iterations (the hot loop).

    Returns the new (f, g) and the column-marginal violation of the last iteration,
    ``max_j |g_new - g_old| / eps`` = ``max_j |log(sum_i pi_ij / b_j)|`` for the plan of
    ``g_old`` normalised over its rows (the plan a barycentric projection uses), over points of
    positive weight: how far the worst-served reference point is from receiving its mass. Compiled
    on GPU into one graph of ``2 * len(eps_steps)`` fused reductions (one read of the cost each).
    """
    for k in range(eps_steps.shape[0] - 1):
        inv_eps = 1.0 / eps_steps[k]
        f = _row_softmin(cost, log_b + g * inv_eps, inv_eps)
        g = _col_softmin(cost_t, log_a + f * inv_eps, inv_eps)
    inv_eps = 1.0 / eps_steps[-1]
    f = _row_softmin(cost, log_b + g * inv_eps, inv_eps)
    g_new = _col_softmin(cost_t, log_a + f * inv_eps, inv_eps)
    return f, g_new, _violation(g_new, g, log_b, inv_eps)


def symmetric_steps(
    cost: torch.Tensor, p: torch.Tensor, log_a: torch.Tensor, eps_steps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Averaged updates ``p <- (p + softmin(C, log a + p / eps)) / 2`` for the symmetric problem
    OT_eps(a, a) (Feydy 2020, Sec. 3.3.3: alternating updates oscillate between the two
    equivalent shifts of a symmetric problem and converge slowly). Same returns as
    :func:`sinkhorn_steps` with ``f = g = p``."""
    last = eps_steps.shape[0] - 1
    for k in range(last):
        inv_eps = 1.0 / eps_steps[k]
        p = 0.5 * (p + _row_softmin(cost, log_a + p * inv_eps, inv_eps))
    inv_eps = 1.0 / eps_steps[last]
    p_new = _row_softmin(cost, log_a + p * inv_eps, inv_eps)
    delta = _violation(p_new, p, log_a, inv_eps)
    p = 0.5 * (p + p_new)
    return p, p, delta


@attrs.frozen
class SinkhornResult:
    """Converged potentials with the cost they solve. Shapes carry the batch dimension
    ``[B, ...]``; the solver squeezes nothing, callers index ``[0]`` for single problems."""

    cost: torch.Tensor  # [B, N, M] float32
    f: torch.Tensor  # [B, N]
    g: torch.Tensor  # [B, M]
    log_a: torch.Tensor  # [B, N]
    log_b: torch.Tensor  # [B, M]
    epsilon: float
    iterations: int
    marginal_error: torch.Tensor  # 0-dim, on the solve's device (float() reads it: a host sync)

    def log_plan(self, rows: slice = slice(None)) -> torch.Tensor:
        f, la = self.f[:, rows], self.log_a[:, rows]
        return (la + f / self.epsilon).unsqueeze(2) + (self.log_b + self.g / self.epsilon).unsqueeze(1) \
            - self.cost[:, rows] / self.epsilon

    def plan(self) -> torch.Tensor:
        """The entropic plan ``pi`` [B, N, M] (materialised; see :meth:`apply` for large N, M)."""
        return self.log_plan().exp()

    def _row_chunks(self, chunk_rows: int | None):
        n = self.cost.shape[1]
        step = n if chunk_rows is None else max(1, chunk_rows)
        return (slice(i, min(n, i + step)) for i in range(0, n, step))

    def apply(self, values: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        """``pi @ values``: [B, M, K] -> [B, N, K], materialising at most ``chunk_rows`` rows of
        the plan at once."""
        v = values.float()
        return torch.cat([torch.bmm(self.log_plan(r).exp_(), v) for r in self._row_chunks(chunk_rows)], 1)

    def barycentric_projection(self, y: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        """``T(x_i) = sum_j pi_ij y_j / sum_j pi_ij`` for ``y`` [B, M, D] -> [B, N, D].

        The row normalisation makes it a softmax over j of ``log b_j + (g_j - C_ij) / eps``,
        so neither ``f`` nor exact row marginals enter: the projection is exact for the
        current ``g`` (W-Flow, Eq. for T_{A,B})."""
        y = y.float()
        h = self.log_b + self.g / self.epsilon
        out = []
        for r in self._row_chunks(chunk_rows):
            w = torch.softmax(h.unsqueeze(1) - self.cost[:, r] / self.epsilon, dim=2)
            out.append(torch.bmm(w, y))
        return torch.cat(out, 1)

    def transport_cost(self) -> torch.Tensor:
        """The dual value ``<a, f> + <b, g>`` [B] = OT_eps(a, b) at convergence."""
        a, b = self.log_a.exp(), self.log_b.exp()
        return (a * torch.nan_to_num(self.f)).sum(1) + (b * torch.nan_to_num(self.g)).sum(1)


class SinkhornSolver:
    """Batched log-domain Sinkhorn with epsilon scaling and early stopping.

    ``epsilon``: target temperature in cost units (cost = |x - y|^2 / 2; geomloss's
    ``blur`` is ``sqrt(epsilon)``). ``scaling``: blur ratio per annealing step (geomloss
    semantics: epsilon shrinks by ``scaling**2``). ``max_iters``: cap on iterations at the
    target temperature; ``tol``: stop when ``max_j |log(column marginal_j / b_j)| < tol`` for
    the row-normalised plan (every reference point receives its mass to within ``tol`` in log
    ratio), checked every ``check_every`` iterations (each check is one device sync). ``compile``: run the
    inner loop through ``torch.compile`` (None: on CUDA only). ``precision``: the cost GEMM's
    (see :func:`squared_cost`); the iterations are float32 in every case. ``anneal=False`` starts
    at the target temperature from zero potentials (no schedule, no host sync for the cost's
    maximum): with ``tol <= 0`` and ``check_every == max_iters`` a solve is exactly ``max_iters``
    iterations, W-Flow's fixed budget (its authors run 10, or 1 at scale).
    """

    def __init__(self, epsilon: float, scaling: float = 0.9, max_iters: int = 1000, tol: float = 1e-3,
                 check_every: int = 10, compile: bool | None = None, precision: str = "fp32",
                 anneal: bool = True) -> None:
        if epsilon <= 0:
            raise ValueError(f"sinkhorn epsilon: expected > 0, got {epsilon}")
        if not 0.0 < scaling < 1.0:
            raise ValueError(f"sinkhorn scaling: expected in (0, 1), got {scaling}")
        if max_iters < 1 or check_every < 1:
            raise ValueError(f"sinkhorn max_iters/check_every: expected >= 1, got {max_iters}/{check_every}")
        self.epsilon = float(epsilon)
        self.scaling = float(scaling)
        self.max_iters = int(max_iters)
        self.tol = float(tol)
        self.check_every = int(check_every)
        self.compile = compile
        if precision not in PRECISIONS:
            raise ValueError(f"sinkhorn precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.anneal = bool(anneal)
        self._steps: dict[Callable, Callable] = {}

    def _compiled(self, fn: Callable, device: torch.device) -> Callable:
        use = self.compile if self.compile is not None else device.type == "cuda"
        if not use:
            return fn
        if fn not in self._steps:
            self._steps[fn] = torch.compile(fn)
        return self._steps[fn]

    def schedule(self, max_cost: float) -> list[float]:
        """Annealing temperatures from ``2 * max_cost`` (geomloss: diameter**2) down to
        ``epsilon``, ratio ``scaling**2``; the target value is not included."""
        start = 2.0 * max_cost
        if start <= self.epsilon:
            return []
        n = math.ceil(math.log(start / self.epsilon) / (-2.0 * math.log(self.scaling)))
        return [start * self.scaling ** (2 * k) for k in range(n)]

    @staticmethod
    def _inputs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.detach(), y.detach()
        if x.dim() == 2 and y.dim() == 2:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
            raise ValueError(f"sinkhorn: expected x [B, N, D] and y [B, M, D], got {tuple(x.shape)} and {tuple(y.shape)}")
        return x, y

    def solve(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor | None = None,
              b: torch.Tensor | None = None, cost: torch.Tensor | None = None) -> SinkhornResult:
        """Solve OT_eps between ``x`` [B, N, D] (or [N, D]) weighted by ``a`` and ``y``
        [B, M, D] weighted by ``b``. Weights may contain zeros (padding masks); None means
        uniform. ``cost`` [B, N, M] replaces the squared cost when given. Runs without
        autograd and outside autocast, in float32."""
        x, y = self._inputs(x, y)
        batch, n, m = x.shape[0], x.shape[1], y.shape[1]
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            c = squared_cost(x, y, self.precision) if cost is None else cost.float().reshape(batch, n, m)
            log_a = _log_weights(a, batch, n, x.device)
            log_b = _log_weights(b, batch, m, x.device)
            c_t = c.transpose(1, 2).contiguous()
            steps = self._compiled(sinkhorn_steps, c.device)
            state, iters, err = self._iterate(c, lambda s, e: steps(c, c_t, *s, log_a, log_b, e),
                                              (c.new_zeros(batch, n), c.new_zeros(batch, m)))
        return SinkhornResult(c, state[0], state[1], log_a, log_b, self.epsilon, iters, err)

    def solve_symmetric(self, x: torch.Tensor, a: torch.Tensor | None = None) -> SinkhornResult:
        """OT_eps(a, a) of a cloud with itself (the debiasing terms of the Sinkhorn
        divergence), with averaged updates; the result has ``f == g``."""
        x, _ = self._inputs(x, x)
        batch, n = x.shape[0], x.shape[1]
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            c = squared_cost(x, x, self.precision)
            log_a = _log_weights(a, batch, n, x.device)
            steps = self._compiled(symmetric_steps, c.device)
            state, iters, err = self._iterate(c, lambda s, e: steps(c, s[0], log_a, e), (c.new_zeros(batch, n),))
        return SinkhornResult(c, state[0], state[-1], log_a, log_a, self.epsilon, iters, err)

    def _iterate(self, c: torch.Tensor, run: Callable, state: tuple) -> tuple[tuple, int, torch.Tensor]:
        """Anneal, then iterate at the target temperature in chunks of ``check_every`` until
        the marginal violation is below ``tol`` or ``max_iters`` target iterations are done
        (at least one chunk). The annealing chunks end with at least one target iteration, so
        the returned potentials always belong to ``epsilon``. Each check reads the violation on
        the host (one device sync per chunk after the first); ``tol <= 0`` runs exactly the
        chunks that fit ``max_iters`` with no sync at all (benchmarks, fixed budgets). The
        violation is returned as a 0-dim device tensor."""
        k = self.check_every
        anneal = self.schedule(float(c.amax())) if self.anneal else []
        pad = k - len(anneal) % k
        eps_chunks = torch.tensor(anneal + [self.epsilon] * pad, device=c.device, dtype=torch.float32).view(-1, k)
        target = torch.full((k,), self.epsilon, device=c.device)
        for chunk in eps_chunks:
            *state, delta = run(state, chunk)
        done = pad
        while done + k <= self.max_iters and (self.tol <= 0 or float(delta) > self.tol):
            *state, delta = run(state, target)
            done += k
        return tuple(state), len(anneal) + done, delta
