"""Benchmark: one feature-space W-Flow training step with our batched Sinkhorn solver against the
same step with geomloss computing the plans, measured in the same run.

    python tools/bench_wflow_step.py                 # MNIST-sized step (GPU): 10 classes x 64
    python tools/bench_wflow_step.py --small         # a quick check, CPU ok
    python tools/bench_wflow_step.py --presets mnist-latent imagenet-b2   # adaptive vs fixed plans (GPU)
    python tools/bench_wflow_step.py --presets mnist-latent imagenet-b2 --tiny   # the same, CPU-sized

``--presets``: the step at a preset's plan sizes with W-Flow's default plans (chunks of 10
Sinkhorn iterations until every plan's marginal error is below ``sinkhorn_tol``, at most
``sinkhorn_max_iters``) against the paper's fixed 10 iterations (``sinkhorn_tol=0 local_k=0``), both in the
same run, with the ratio, the iterations the default ran and the marginal error each left:

- ``mnist-latent`` (configs/mnist-latent/wflow.yaml): 16-D codes, 10 classes x 128 generated
  against a bank of 1,024 per class, R = 0.05 and 0.01, MLP 1024 x 4, fp32;
- ``imagenet-b2`` (configs/imagenet256/wflow-b2.yaml): 4 x 32 x 32 latents, one GPU's micro-batch
  of 8 classes x 64 against a bank of 64, conv-mae features (width 128, 3 stages; random
  weights), CFG (w in [0, 2], a third reference per plan), DiT-B/2 under bf16 autocast.

Data and features are random, so the iterations the default needs here are those of random
clouds; a training run logs its own (``sinkhorn_iters``, ``sinkhorn_error``).

The step is the objective's own ``loss`` + backward + AdamW: generator forward (with gradients)
and a second forward (self term), the feature network on generated, second-batch and memory-bank
samples, every (class x feature place x temperature x reference) plan, barycentric projections,
the loss and its backward through the frozen features into the generator. Only the plans differ:

- ours: ``project_stacked`` (one batched log-domain solve per vector and reference size,
  ``--iters`` fixed iterations from zero potentials; with ``--compile`` also the compiled loop
  (``objective.sinkhorn_compile``: each iteration one fused pass over the cost), both rows in
  the same run);
- geomloss: ``SamplesLoss("sinkhorn", potentials=True, backend="tensorized")`` on the same
  problems, batched the same way (one call per vector size and reference size, so no padding is
  needed), its own epsilon-scaling schedule (``--scaling``; its iteration count is printed and
  our solver is also timed at that count), then the same softmax projection from its potential.

The feature network is the conv-mae encoder's architecture with random weights (speed does not
depend on them); data are random. Times are medians after warm-up; ratios are geomloss / ours.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from onestep.compare.speed import median_ms

import onestep_wflow.objective as wflow_objective
from onestep.interfaces import Batch, DataSpec, Networks, StepInfo
from onestep.registry import Registry
from onestep_features import ConvEncoder, EncoderArch, save_encoder
from onestep_features.latent_mae import LatentMAEConfig, LatentMAEFeatures
from onestep_sinkhorn import project_stacked
from onestep_wflow.objective import WFlow, WFlowConfig


def geomloss_iterations(x: torch.Tensor, y: torch.Tensor, blur: float, scaling: float) -> int:
    """Iterations geomloss runs on this batch of problems: its epsilon schedule from the clouds'
    diameter down to ``blur``, plus the final extrapolation."""
    try:
        from geomloss.sinkhorn_divergence import epsilon_schedule, max_diameter
    except ImportError:  # geomloss >= 0.3.1 keeps SamplesLoss's helpers here
        from geomloss._legacy.sinkhorn_divergence import epsilon_schedule, max_diameter

    diameter = max_diameter(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
    return len(epsilon_schedule(2, diameter, blur, scaling)) + 1


class GeomlossPlans:
    """``project_stacked``'s contract with geomloss computing the potentials; counts its calls."""

    def __init__(self, blur: float, scaling: float) -> None:
        from geomloss import SamplesLoss

        self.eps = blur ** 2
        self.loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=False, potentials=True,
                                backend="tensorized")
        self.blur, self.scaling = blur, scaling
        self.calls = 0
        self.iterations = 0

    def __call__(self, solver, problems, stats=None):
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (x, y, _) in enumerate(problems):
            groups.setdefault((x.shape[2], y.shape[1]), []).append(i)
        out = [None] * len(problems)
        for idx in groups.values():
            x = torch.cat([problems[i][0] for i in idx]).detach().float().contiguous()
            y = torch.cat([problems[i][1] for i in idx]).detach().float().contiguous()
            b = torch.cat([problems[i][2] if problems[i][2] is not None else torch.ones(y.shape[1], device=y.device)
                           .expand(problems[i][1].shape[0], -1) for i in idx]).float()
            b = b / b.sum(1, keepdim=True)
            a = torch.full(x.shape[:2], 1.0 / x.shape[1], device=x.device)
            self.calls += 1
            self.iterations = max(self.iterations, geomloss_iterations(x, y, self.blur, self.scaling))
            _, g = self.loss(a, x, b, y)
            with torch.no_grad():
                cost = 0.5 * torch.cdist(x, y).pow(2)
                w = torch.softmax(b.log()[:, None] + (g[:, None] - cost) / self.eps, dim=2)
                t = torch.bmm(w, y)
            for i, part in zip(idx, t.split([problems[i][0].shape[0] for i in idx])):
                out[i] = part
        if stats is not None:  # what the objective logs; geomloss reports no marginal error
            stats.update(iterations=self.iterations, marginal_error=torch.tensor(float("nan")))
        return out


def random_conv_features(spec: DataSpec, width: int, stages: int, device: torch.device) -> LatentMAEFeatures:
    """The conv-mae encoder's architecture with random weights (seed 0) as the feature network of
    ``spec``'s samples: speed does not depend on the weights."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        weights = save_encoder(ConvEncoder(EncoderArch(in_channels=spec.shape[0] + 1, width=width, stages=stages)),
                               Path(tmp) / "encoder.safetensors")
        features = LatentMAEFeatures(LatentMAEConfig(path=str(weights)), spec=spec)
        features.prepare(None, device)  # reads the weights now
    return features


def table_start(device: torch.device, repeats: int, tiny: bool) -> None:
    """The device line and the header of the ``| what | ms (or ratio) | notes |`` table; TF32 on."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} torch={torch.__version__} repeats={repeats}{' (tiny sizes)' if tiny else ''}")
    print()
    print("| what | ms (or ratio) | notes |")
    print("|---|---|---|")


PRESETS = {
    # name: (sample shape, classes, per class, bank, R list, feature encoder width (0: none), CFG max, backbone, bf16)
    "mnist-latent": ((16,), 10, 128, 1024, [0.05, 0.01], 0, 0.0, ("mlp", {"width": 1024, "depth": 4, "generator_out_norm": True}), False),
    "imagenet-b2": ((4, 32, 32), 8, 64, 64, [0.05], 128, 2.0, ("dit", {"size": "B/2"}), True),
}


def preset_step(name: str, tiny: bool, device: torch.device, repeats: int) -> list[tuple[str, str, str]]:
    """Time one W-Flow step at a preset's plan sizes with the default adaptive plans and with the
    paper's fixed 10 iterations; rows (what, value, notes)."""
    shape, classes, per_class, bank, rs, enc_width, cfg_max, (backbone, bb_kwargs), bf16 = PRESETS[name]
    if tiny:  # CPU-sized: same plan structure, fewer and smaller pieces
        classes, per_class, bank = 2, 16, min(bank, 64)
        enc_width = min(enc_width, 8)
        shape = shape if len(shape) == 1 else (shape[0], 16, 16)
        bb_kwargs = {"width": 64, "depth": 2} if backbone == "mlp" else {"size": "T/4"}
    spec = DataSpec(shape=shape, num_classes=classes, kind="latents")
    features = random_conv_features(spec, enc_width, 3, device) if enc_width else None
    registry = Registry.discover()
    rows = []
    results = {}
    for label, tol in (("default", None), ("fixed", 0.0)):
        config = WFlowConfig(relative_temperatures=rs, per_class=per_class, bank_per_class=bank, cfg_max=cfg_max)
        if tol is not None:  # the paper's step: fixed iterations, the temperature R S uncapped
            config.sinkhorn_tol, config.local_k = tol, 0
        objective = WFlow(config, spec=spec, features=features)
        info = registry.get("backbone", backbone)
        torch.manual_seed(0)
        generator = registry.build("backbone", backbone, info.cls.Config(**bb_kwargs)).build(
            objective.networks()["generator"], spec).to(device)
        opt = torch.optim.AdamW(generator.parameters(), lr=1e-4, betas=(0.9, 0.95))
        nets = Networks({"generator": generator})
        g = torch.Generator().manual_seed(1)
        batch = classes * per_class
        data = Batch(torch.randn(batch, *shape, generator=g).to(device), torch.arange(batch).remainder(classes).to(device))
        for _ in range(max(1, -(-bank // per_class))):  # fill the memory bank
            objective._push(data.x, data.y)
        logs = []

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                loss, out = objective.loss("generator", nets, [data], StepInfo(0, 1))
            loss.backward()
            opt.step()
            logs.append((out["sinkhorn_iters"], float(out["sinkhorn_error"])))

        for _ in range(2):  # warm-up
            step()
        logs.clear()
        ms = median_ms(step, repeats, device, warmup=0)
        iters = sum(i for i, _ in logs) / len(logs)
        err = max(e for _, e in logs)
        results[label] = ms
        what = "default plans" if tol is None else "the paper's fixed 10 iterations"
        rows.append((f"{name}: step, {what}", f"{ms:.2f}",
                     f"{iters:.0f} iterations per solve, marginal error {err:.3g} (tol {config.sinkhorn_tol})"))
    rows.append((f"{name}: slowdown default / paper's fixed 10", f"{results['default'] / results['fixed']:.2f}x",
                 f"{classes} classes x {per_class} vs bank {bank}, R={rs}, {'features' if enc_width else 'no features'}"
                 f"{', CFG' if cfg_max else ''}, {backbone} {bb_kwargs}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", choices=sorted(PRESETS), help="adaptive vs fixed plans at these "
                    "presets' plan sizes (instead of the geomloss comparison)")
    ap.add_argument("--tiny", action="store_true", help="with --presets: CPU-sized versions of the presets")
    ap.add_argument("--small", action="store_true", help="4 classes x 16, bank 32, width-8 encoder, MLP 128: CPU ok")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--bank", type=int, default=128)
    ap.add_argument("--encoder-width", type=int, default=32, help="feature encoder width (conv-mae default 32)")
    ap.add_argument("--temperatures", "--epsilon", type=float, nargs="+", default=[0.05], help="relative temperatures R")
    ap.add_argument("--iters", type=int, default=10, help="our Sinkhorn iterations (the paper's 10)")
    ap.add_argument("--scaling", type=float, default=0.5, help="geomloss epsilon-scaling ratio")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile our solver's loop (CUDA)")
    ap.add_argument("--backbone", default="mlp", help="generator backbone (registry name): mlp (the preset's "
                    "1024 x 4), dit or dit-recursive (--size)")
    ap.add_argument("--size", default="S/4", help="DiT size when --backbone is dit or dit-recursive")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.presets:
        device = torch.device(args.device)
        table_start(device, args.repeats, args.tiny)
        for preset in args.presets:
            for what, value, note in preset_step(preset, args.tiny, device, args.repeats):
                print(f"| {what} | {value} | {note} |", flush=True)
        return
    if args.small:
        args.classes, args.per_class, args.bank, args.encoder_width, args.repeats = 4, 16, 32, 8, 3
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    spec = DataSpec(shape=(1, 28, 28), num_classes=args.classes, kind="images")
    batch = args.classes * args.per_class

    features = random_conv_features(spec, args.encoder_width, 3, device)
    config = WFlowConfig(relative_temperatures=args.temperatures, per_class=args.per_class, bank_per_class=args.bank,
                         sinkhorn_iters=args.iters, sinkhorn_tol=0.0, precision=args.precision,
                         sinkhorn_compile=False)  # exactly --iters: the geomloss comparison's fixed budget
    objective = WFlow(config, spec=spec, features=features)
    registry = Registry.discover()
    info = registry.get("backbone", args.backbone)
    if "dit" in args.backbone:
        bb_config = info.cls.Config(size=args.size)
    elif args.backbone == "mlp":
        bb_config = info.cls.Config(width=128 if args.small else 1024, depth=4)
    else:
        bb_config = info.cls.Config()
    generator = registry.build("backbone", args.backbone, bb_config).build(objective.networks()["generator"], spec).to(device)
    opt = torch.optim.AdamW(generator.parameters(), lr=1e-4, betas=(0.9, 0.95))
    nets = Networks({"generator": generator})
    g = torch.Generator().manual_seed(1)
    data = Batch(torch.rand(batch, *spec.shape, generator=g).mul(2).sub(1).to(device),
                 torch.arange(batch).remainder(args.classes).to(device))
    for _ in range(max(1, -(-args.bank // args.per_class))):  # fill the memory bank
        objective._push(data.x, data.y)
    info_step = StepInfo(0, 1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = objective.loss("generator", nets, [data], info_step)
        loss.backward()
        opt.step()

    plans = {"n": 0, "ms": 0.0}

    def timed(fn):
        def run(*a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            plans["n"] += 1
            plans["ms"] += (time.perf_counter() - t) * 1e3
            return out
        return run

    def measure(project) -> tuple[float, float]:
        wflow_objective.project_stacked = timed(project)
        for _ in range(2):  # warm-up (and compilation) outside both the step and the plan timings
            step()
        plans.update(n=0, ms=0.0)
        ms = median_ms(step, args.repeats, device, warmup=0)
        per_step = plans["ms"] / max(1, plans["n"])
        wflow_objective.project_stacked = project_stacked
        return ms, per_step

    blur = math.sqrt(0.5)  # the objective's plans are exp(-|x - y|^2) on pre-scaled points: eps = 1/2
    rows = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} torch={torch.__version__} generator={args.backbone}"
          f"{' ' + args.size if 'dit' in args.backbone else ''} batch={batch} ({args.classes} classes x "
          f"{args.per_class}) bank={args.bank}/class encoder width={args.encoder_width} R={args.temperatures} "
          f"precision={args.precision} compiled solver row={args.compile}")
    families = objective.phi(data.x[:2])
    n_places = sum(f.shape[1] for f in families)
    print(f"families={len(families)} places={n_places} plans per step="
          f"{args.classes * n_places * len(args.temperatures) * 2} (class x place x R x reference)")

    ours_ms, ours_plans = measure(project_stacked)
    rows.append((f"ours: W-Flow step ({args.iters} Sinkhorn it)", ours_ms, f"plans {ours_plans:.2f} ms/call"))
    geo = GeomlossPlans(blur, args.scaling)
    geo_ms, geo_plans = measure(geo)
    geo_iters = geo.iterations
    rows.append((f"geomloss: W-Flow step (scaling {args.scaling}, ~{geo_iters} it)", geo_ms,
                 f"plans {geo_plans:.2f} ms/call"))
    objective.solver.max_iters = objective.solver.check_every = geo_iters
    same_ms, same_plans = measure(project_stacked)
    objective.solver.max_iters = objective.solver.check_every = args.iters
    rows.append((f"ours: W-Flow step at geomloss's iteration count ({geo_iters} it)", same_ms,
                 f"plans {same_plans:.2f} ms/call"))

    def no_plans(solver, problems, stats=None):  # the step's floor without any OT: projections = references' means
        if stats is not None:
            stats.update(iterations=0, marginal_error=torch.zeros(()))
        return [y.float().mean(1, keepdim=True).expand(x.shape[0], x.shape[1], -1) for x, y, _ in problems]

    compiled_ms = None
    if args.compile:
        objective.solver.compile = True
        compiled_ms, compiled_plans = measure(project_stacked)  # the warm-up steps compile
        objective.solver.compile = False
        rows.append((f"ours, compiled loop: W-Flow step ({args.iters} Sinkhorn it)", compiled_ms,
                     f"plans {compiled_plans:.2f} ms/call"))
    floor_ms, _ = measure(no_plans)
    rows.append(("step without plans (generator, features, loss, AdamW)", floor_ms, ""))
    if compiled_ms is not None:
        rows.append(("speed-up: geomloss step / ours compiled (default iterations)", geo_ms / compiled_ms, ""))
        rows.append(("speed-up of the plans alone: geomloss / ours compiled",
                     (geo_ms - floor_ms) / max(1e-9, compiled_ms - floor_ms), ""))
    rows.append(("speed-up: geomloss step / ours (default iterations)", geo_ms / ours_ms, ""))
    rows.append(("speed-up: geomloss step / ours (same iterations)", geo_ms / same_ms, ""))
    rows.append(("speed-up of the plans alone: geomloss / ours (default iterations)",
                 (geo_ms - floor_ms) / max(1e-9, ours_ms - floor_ms), ""))
    print()
    print("| what | ms (or ratio) | notes |")
    print("|---|---|---|")
    for what, value, note in rows:
        print(f"| {what} | {f'{value:.2f}x' if what.startswith('speed-up') else f'{value:.2f}'} | {note} |")


if __name__ == "__main__":
    main()
