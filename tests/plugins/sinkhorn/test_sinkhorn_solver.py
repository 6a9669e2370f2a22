"""The log-domain Sinkhorn solver against a float64 brute-force reference and geomloss:
potentials, divergence and its gradient, barycentric projections, per-class batching, bf16."""
import math

import pytest
import torch

from onestep_sinkhorn import Groups, SinkhornBarycentricProjection, SinkhornSolver, debiased_potentials, squared_cost

geomloss = pytest.importorskip("geomloss")


pytestmark = pytest.mark.usefixtures("one_thread")


def clouds(seed=0, n=60, m=80, d=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g) * 1.5 + 0.5


def reference_potentials(x, y, eps, iters=1500):
    """Plain alternating log-domain Sinkhorn in float64 from zero, run to convergence."""
    x, y = x.double(), y.double()
    c = ((x[:, None] - y[None]) ** 2).sum(-1) / 2
    la, lb = torch.full((len(x),), -math.log(len(x))).double(), torch.full((len(y),), -math.log(len(y))).double()
    f, g = torch.zeros(len(x)).double(), torch.zeros(len(y)).double()
    for _ in range(iters):
        f = -eps * torch.logsumexp(lb + (g - c) / eps, 1)
        g = -eps * torch.logsumexp(la[:, None] + (f[:, None] - c) / eps, 0)
    return f, g, c


def centred(v):
    return v - v.mean()


def test_potentials_match_float64_reference_and_geomloss():
    x, y = clouds()
    blur = 0.5
    res = SinkhornSolver(blur**2, scaling=0.9, max_iters=2000, tol=1e-6).solve(x, y)
    f, g, _ = reference_potentials(x, y, blur**2)
    assert res.marginal_error < 1e-6
    # potentials are unique up to (f + k, g - k): compare centred potentials and the dual value
    torch.testing.assert_close(centred(res.f[0]).double(), centred(f), atol=2e-5, rtol=0)
    torch.testing.assert_close(centred(res.g[0]).double(), centred(g), atol=2e-5, rtol=0)
    ot_ref = float(f.mean() + g.mean())
    assert float(res.transport_cost()[0]) == pytest.approx(ot_ref, rel=1e-5)
    # geomloss (same cost |x-y|^2/2, eps = blur^2) ends its annealing after one iteration at the
    # target temperature, so it agrees to its own convergence level, which fine scaling improves
    loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.99, debias=False, backend="tensorized",
                                potentials=True)
    fg, gg = loss(x, y)
    assert float((centred(fg[0]) - centred(res.f[0])).abs().max()) < 0.1
    assert float((centred(gg[0]) - centred(res.g[0])).abs().max()) < 0.1
    value = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.99, debias=False, backend="tensorized")(x, y)
    assert float(value) == pytest.approx(ot_ref, rel=2e-3)


def test_debiased_divergence_and_its_gradient_match_geomloss():
    x, y = clouds(1, 50, 70, 2)
    blur, scaling = 0.7, 0.99
    xa = x.clone().requires_grad_(True)
    big_f, big_g, s = debiased_potentials(xa, y, blur=blur, scaling=scaling, tol=1e-6)
    (grad,) = torch.autograd.grad(s, xa)
    xb = x.clone().requires_grad_(True)
    loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True, backend="tensorized")
    s_ref = loss(xb, y)
    (grad_ref,) = torch.autograd.grad(s_ref, xb)
    assert float(s) > 0.1
    assert float(s) == pytest.approx(float(s_ref), rel=5e-3)
    torch.testing.assert_close(grad, grad_ref, atol=0.03 * float(grad_ref.abs().max()), rtol=0)
    fg, gg = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True, backend="tensorized",
                                  potentials=True)(x, y)
    assert float((centred(fg[0]) - centred(big_f)).abs().max()) < 0.05
    assert float((centred(gg[0]) - centred(big_g)).abs().max()) < 0.05


def test_divergence_is_zero_on_identical_clouds_and_grows_with_shift():
    x, _ = clouds(2, 40, 40, 2)
    values = [float(debiased_potentials(x, x + shift, blur=0.5, tol=1e-6)[2]) for shift in (0.0, 0.5, 1.0)]
    assert abs(values[0]) < 1e-4
    # for a pure translation S_eps = |shift|^2 / 2 summed over dimensions
    assert values[1] == pytest.approx(2 * 0.5**2 / 2, rel=1e-3)
    assert values[2] == pytest.approx(2 * 1.0**2 / 2, rel=1e-3)


def test_barycentric_projection_is_the_plan_weighted_mean():
    x, y = clouds(3, 40, 55, 4)
    eps = 0.3
    f, g, c = reference_potentials(x, y, eps)
    plan = torch.exp((f[:, None] + g[None] - c) / eps) / (len(x) * len(y))
    expected = (plan @ y.double()) / plan.sum(1, keepdim=True)
    solver = SinkhornSolver(eps, scaling=0.8, max_iters=2000, tol=1e-6)
    got = SinkhornBarycentricProjection(solver)(x, y)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)
    chunked = SinkhornBarycentricProjection(solver, chunk_rows=7)(x, y)
    torch.testing.assert_close(chunked, got, atol=1e-6, rtol=0)
    res = solver.solve(x, y)
    torch.testing.assert_close(res.plan()[0].double(), plan, atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(res.plan()[0].sum(1), torch.full((len(x),), 1 / len(x)), atol=1e-6, rtol=0)


def test_projection_is_minus_the_gradient_of_ot_times_n():
    """Envelope theorem: grad_{x_i} OT_eps = a_i (x_i - T(x_i)), checked against geomloss autograd."""
    x, y = clouds(4, 48, 64, 2)
    blur = 0.6
    t = SinkhornBarycentricProjection(SinkhornSolver(blur**2, scaling=0.9, max_iters=2000, tol=1e-6))(x, y)
    xg = x.clone().requires_grad_(True)
    ot = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.99, debias=False, backend="tensorized")(xg, y)
    (grad,) = torch.autograd.grad(ot, xg)
    err = (t - (x - len(x) * grad)).norm(dim=1)
    assert float(err.max()) < 0.05 and float(err.mean()) < 0.01  # geomloss's own convergence level


def test_batched_over_classes_equals_per_class_solves():
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0] * 9 + [1] * 23 + [2] * 16)[torch.randperm(48, generator=g)]
    x = torch.randn(48, 3, generator=g) + labels[:, None].float()
    y = torch.randn(48, 3, generator=g) * 0.5 + labels[:, None].float() * 2
    groups = Groups.by_label(labels)
    solver = SinkhornSolver(0.2, scaling=0.8, max_iters=3000, tol=1e-6)
    w = groups.weights
    res = solver.solve(groups.gather(x), groups.gather(y), w, w)
    batched = groups.scatter(res.barycentric_projection(groups.gather(y)), len(x))
    for c in range(3):
        rows = labels == c
        alone = SinkhornBarycentricProjection(solver)(x[rows], y[rows])
        torch.testing.assert_close(batched[rows], alone, atol=1e-5, rtol=0)
    assert torch.equal(groups.labels, torch.tensor([0, 1, 2]))
    assert groups.mask.sum(1).tolist() == [9, 23, 16]


def test_bf16_inputs_give_finite_float32_results():
    x, y = clouds(6, 64, 64, 16)
    # a large common offset is where a bf16 cost would lose every difference
    xb, yb = (x + 50).bfloat16(), (y + 50).bfloat16()
    solver = SinkhornSolver(0.5, scaling=0.8, max_iters=2000, tol=1e-5)
    t = SinkhornBarycentricProjection(solver)(xb, yb)
    assert t.dtype == torch.float32 and torch.isfinite(t).all()
    ref = SinkhornBarycentricProjection(solver)(xb.float(), yb.float())
    torch.testing.assert_close(t, ref, atol=1e-5, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = solver.solve(xb, yb)
    assert res.f.dtype == torch.float32 and torch.isfinite(res.f).all() and torch.isfinite(res.g).all()
    assert res.marginal_error < 1e-5
    exact = squared_cost(xb.float()[None] - 50, yb.float()[None] - 50)
    torch.testing.assert_close(res.cost, exact, atol=1e-3, rtol=1e-5)


def test_fixed_budget_and_annealing_end_at_the_target_temperature():
    x, y = clouds(7, 30, 30, 2)
    anneal = SinkhornSolver(0.05, scaling=0.9).schedule(float(squared_cost(x[None], y[None]).amax()))
    assert anneal[0] > anneal[-1] > 0.05 and len(anneal) > 5
    # tol <= 0: a fixed number of target iterations (whole chunks), no early stop
    res = SinkhornSolver(0.05, scaling=0.9, max_iters=20, tol=0.0, check_every=5).solve(x, y)
    assert 20 - 5 < res.iterations - len(anneal) <= 20
    # an annealing schedule that fills whole chunks still ends with iterations at epsilon
    loose = SinkhornSolver(0.05, scaling=0.9, max_iters=1, tol=1e9, check_every=len(anneal)).solve(x, y)
    assert loose.iterations > len(anneal)


def test_tolerance_serves_every_reference_point_and_stops_at_the_first_chunk_when_met():
    """W-Flow's adaptive plans: chunks of 10 iterations from zero potentials until the marginal
    error (the worst reference point's |log(received mass / weight)| under the row-normalised plan
    that the projection uses) is below tol. A bulk of particles against data with a light cluster
    far away: 10 iterations leave the far points short of their mass, the tolerance brings it;
    a well-posed problem stops after one chunk."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 2, generator=g)
    far = torch.randn(8, 2, generator=g) * 0.2 + torch.tensor([3.0, 3.0])
    y = torch.cat([torch.randn(192, 2, generator=g), far])

    def received(res):  # mass per reference point under the row-normalised plan, over its weight
        w = torch.softmax(res.log_b[:, None] + (res.g[:, None] - res.cost) / res.epsilon, dim=2)[0]
        return w.mean(0) * len(y)

    fixed = SinkhornSolver(0.1, max_iters=10, check_every=10, tol=0.0, anneal=False).solve(x, y)
    adaptive = SinkhornSolver(0.1, max_iters=1000, check_every=10, tol=0.05, anneal=False).solve(x, y)
    assert fixed.iterations == 10 and float(fixed.marginal_error) > 0.3
    assert 10 < adaptive.iterations < 1000 and float(adaptive.marginal_error) <= 0.05
    # the reported error is the projection's: every point within it (one iteration later: tighter)
    assert float(received(adaptive).log().abs().max()) <= 0.05
    assert float(received(fixed)[-8:].mean()) < 0.8 < float(received(adaptive)[-8:].mean())
    easy = SinkhornSolver(2.0, max_iters=1000, check_every=10, tol=0.05, anneal=False).solve(x, y[:192])
    assert easy.iterations == 10 and float(easy.marginal_error) <= 0.05


def test_bad_settings_raise_one_line_errors():
    for kwargs, field in (({"epsilon": 0}, "epsilon"), ({"epsilon": 1, "scaling": 1.0}, "scaling"),
                          ({"epsilon": 1, "precision": "fp8"}, "precision")):
        with pytest.raises(ValueError, match=field) as err:
            SinkhornSolver(**kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expected x"):
        SinkhornSolver(1.0).solve(torch.zeros(3, 2), torch.zeros(4, 3))


def test_stacked_per_location_problems_equal_separate_solves():
    """W-Flow's layout: many (class x feature location) problems of several vector sizes and
    reference sizes (some references with empty bank slots, weight 0) solved by project_stacked in
    one batched call per (vector size, reference size), each equal to the same problem solved on
    its own without the empty slots."""
    from onestep_sinkhorn import project_stacked

    g = torch.Generator().manual_seed(11)
    problems = []
    for groups, m, d in ((6, 12, 4), (3, 20, 4), (5, 12, 7), (2, 12, 4)):  # (class x place) problems, refs, dim
        x = torch.randn(groups, 10, d, generator=g)
        y = torch.randn(groups, m, d, generator=g) * 0.7 + 0.5
        b = (torch.rand(groups, m, generator=g) < 0.8).float()
        b[:, 0] = 1.0  # every problem keeps at least one reference point
        problems.append((x, y, b))
    for iters in (3, 200):  # W-Flow's fixed budget and a converged solve
        solver = SinkhornSolver(0.3, max_iters=iters, check_every=iters, tol=0.0, anneal=False)
        calls = []
        original = solver.solve
        solver.solve = lambda *a, **k: calls.append(1) or original(*a, **k)
        stacked = project_stacked(solver, problems)
        assert len(calls) == 3  # one call per (vector size, reference size): (4, 12), (4, 20), (7, 12)
        solver.solve = original
        for (x, y, b), t in zip(problems, stacked):
            for i in range(len(x)):
                keep = b[i] > 0
                alone = solver.solve(x[i], y[i][keep]).barycentric_projection(y[i][keep][None])[0]
                torch.testing.assert_close(t[i], alone, atol=2e-5, rtol=0)


@pytest.mark.slow
def test_compiled_loop_gives_the_eager_loops_projections():
    """``compile=True`` (``objective.sinkhorn_compile``, the loop the W-Flow speed benchmark times)
    fuses each iteration into one pass over the cost: on W-Flow's stacked layout (padded
    references, a fixed budget from zero potentials) it must give the eager loop's projections."""
    from onestep_sinkhorn import project_stacked

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    b = (torch.rand(4, 12, generator=g) < 0.8).float()
    b[:, 0] = 1.0
    problems = [(torch.randn(4, 10, 3, generator=g), torch.randn(4, 12, 3, generator=g) + 0.3, b)]
    eager = SinkhornSolver(0.1, max_iters=20, check_every=20, tol=0.0, anneal=False, compile=False)
    fused = SinkhornSolver(0.1, max_iters=20, check_every=20, tol=0.0, anneal=False, compile=True)
    want, got = project_stacked(eager, problems)[0], project_stacked(fused, problems)[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (want - problems[0][0]).abs().mean() > 0.1  # the projections moved the points: not a trivial equality
