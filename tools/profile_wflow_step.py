"""Benchmark: where one W-Flow training step of an ImageNet preset spends its time (issue 33), beside
the same generator's plain forward and backward on the same micro-batch, in one process.

    python tools/profile_wflow_step.py                          # B/2 and XL/2 presets (GPU)
    python tools/profile_wflow_step.py --configs configs/imagenet256/wflow-l2.yaml --gpus 8
    python tools/profile_wflow_step.py --tiny                   # CPU-sized plumbing check

Each preset is read from its YAML file: the objective section as written, the backbone size, the
feature network's architecture (conv-mae width and stages, random weights: speed does not depend
on them), precision, and the micro-batch one GPU computes (``train.batch_size / gpus /
train.grad_accum``). Latents are random, of the preset's shape; the memory bank is filled first.

Rows (medians of ``--repeats`` steps after warm-up):

- ``generator fwd+bwd``: the generator's forward and backward on the micro-batch (loss = mean
  square of the output), the floor the issue's target is stated against (step <= 1.5x of it);
- ``W-Flow step``: the objective's ``loss`` + backward + AdamW, exactly as the trainer runs it
  (no timers inside);
- the breakdown of the same step, with the device synchronised around each part (so the parts add
  up to a slightly slower step, shown as ``step with timers``): generator forwards (the graded one
  and the self term's second batch), feature network forwards (generated, second batch, CFG's
  unconditional data), Sinkhorn plans and projections (``project_stacked``), the rest of the
  velocity (temperatures, scales, normalisation), backward (through the features into the
  generator), optimizer, and what is left (Python, launches, host syncs);
- peak GPU memory of the step at this micro-batch (the issue asks every preset to fit 80 GB).
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
import yaml
from bench_wflow_step import random_conv_features, table_start

import onestep_wflow.objective as wflow_objective
from onestep.compare.speed import median_ms
from onestep.interfaces import Batch, DataSpec, Networks, StepInfo
from onestep.registry import Registry
from onestep_wflow.objective import WFlow, WFlowConfig

DEFAULT_CONFIGS = ["configs/imagenet256/wflow-b2.yaml", "configs/imagenet256/wflow-xl2.yaml"]
SHAPE = (4, 32, 32)  # SD-VAE latents of 256 x 256 images
CLASSES = 1000


class PartTimer:
    """Wall time (ms, device synchronised) spent inside each wrapped callable, by part name."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms, self.active = device, {}, False

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def part(self, name: str):
        if not self.active:
            yield
            return
        self.sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t) * 1e3

    def wrap(self, fn, name: str):
        def timed(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)
        return timed


def objective_config(section: dict) -> WFlowConfig:
    fields = {k: v for k, v in section.items() if k != "name"}
    return WFlowConfig(**fields)


def profile(path: str, gpus: int, tiny: bool, device: torch.device, repeats: int) -> list[tuple[str, str, str]]:
    """Rows (what, value, notes) for the preset in ``path``."""
    preset = yaml.safe_load(Path(path).read_text())
    train, feats = preset["train"], preset.get("features") or {}
    config = objective_config(preset["objective"])
    micro = train["batch_size"] // gpus // train.get("grad_accum", 1)
    size, shape, width, stages = preset["backbone"]["size"], SHAPE, feats.get("width", 32), feats.get("stages", 3)
    if tiny:
        micro, size, shape, width = 2 * config.per_class // 8, "T/4", (4, 16, 16), 8
        config.per_class, config.bank_per_class = config.per_class // 8, config.bank_per_class // 8
    spec = DataSpec(shape=shape, num_classes=CLASSES, kind="latents")
    bf16 = train.get("precision") == "bf16" and device.type == "cuda"
    features = random_conv_features(spec, width, stages, device)
    objective = WFlow(config, spec=spec, features=features)
    registry = Registry.discover()
    info = registry.get("backbone", preset["backbone"]["name"])
    torch.manual_seed(0)
    generator = registry.build("backbone", preset["backbone"]["name"], info.cls.Config(size=size)).build(
        objective.networks()["generator"], spec).to(device)
    opt = torch.optim.AdamW(generator.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    nets = Networks({"generator": generator})
    g = torch.Generator().manual_seed(1)
    classes = micro // config.per_class
    y = torch.arange(micro).remainder(classes)
    data = Batch(torch.randn(micro, *shape, generator=g).to(device), y.to(device))
    for _ in range(max(1, -(-config.bank_per_class // config.per_class))):
        objective._push(data.x, data.y)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    timer = PartTimer(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss, _ = objective.loss("generator", nets, [data], StepInfo(0, 1))
        with timer.part("backward (features and generator)"):
            loss.backward()
        with timer.part("optimizer (AdamW)"):
            opt.step()

    cond = {"t": torch.rand(micro, device=device)} if config.with_cfg else {}

    def generator_only() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = generator(torch.randn_like(data.x), y=data.y, **cond)
        out.float().pow(2).mean().backward()

    for _ in range(2):
        step()
        generator_only()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen_ms = median_ms(generator_only, repeats, device, warmup=0)
    gen_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_ms = median_ms(step, repeats, device, warmup=0)
    step_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    velocity, phi, project = objective.velocity, objective.phi, wflow_objective.project_stacked
    forward = generator.forward
    objective.phi = timer.wrap(phi, "feature network forwards")
    wflow_objective.project_stacked = timer.wrap(project, "Sinkhorn plans and projections")
    objective.velocity = timer.wrap(velocity, "velocity (all)")
    generator.forward = timer.wrap(forward, "generator forwards (graded + self-term batch)")
    timer.active = True
    timed = []
    for _ in range(repeats):
        timer.sync()
        t = time.perf_counter()
        step()
        timer.sync()
        timed.append((time.perf_counter() - t) * 1e3)
    timer.active = False
    objective.velocity, objective.phi, wflow_objective.project_stacked = velocity, phi, project
    generator.forward = forward
    per = {k: v / repeats for k, v in timer.ms.items()}
    total = sum(timed) / repeats
    plans = per.pop("Sinkhorn plans and projections", 0.0)
    per["velocity: temperatures, scales, normalisation"] = per.pop("velocity (all)", 0.0) - plans
    per["Sinkhorn plans and projections"] = plans
    per["rest (Python, launches, host syncs)"] = total - sum(per.values())

    name = Path(path).stem
    notes = (f"DiT-{size}, micro-batch {micro} ({classes} classes x {config.per_class}) on {gpus} GPUs, bank "
             f"{config.bank_per_class}, conv-mae width {width} x {stages} stages, R={config.relative_temperatures}, "
             f"{'bf16' if bf16 else 'fp32'}")
    rows = [(f"{name}: generator fwd+bwd", f"{gen_ms:.1f}", f"peak {gen_mem:.1f} GiB; {notes}"),
            (f"{name}: W-Flow step", f"{step_ms:.1f}", f"peak {step_mem:.1f} GiB"),
            (f"{name}: step / generator fwd+bwd", f"{step_ms / gen_ms:.2f}x", "issue 33's target: <= 1.5x"),
            (f"{name}: step with timers", f"{total:.1f}", "the breakdown below adds up to this")]
    rows += [(f"{name}:   {part}", f"{ms:.1f}", f"{100 * ms / total:.0f}%") for part, ms in per.items()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="W-Flow preset files")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs the global batch is split over (the presets' 8)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized: T/4 on 4 x 16 x 16, 2 classes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    table_start(device, args.repeats, args.tiny)
    for path in args.configs:
        for what, value, note in profile(path, args.gpus, args.tiny, device, args.repeats):
            print(f"| {what} | {value} | {note} |", flush=True)


if __name__ == "__main__":
    main()
