"""Training-step throughput and MFU of Adversarial Flow with DiT generator and critic.

One *step* is what the trainer runs per iteration for ``objective adversarial-flow``: the critic
phase then the generator phase, each through its own DeepSpeed engine (ZeRO stage 2, AdamW
beta = (0, 0.9), bf16 autocast), with the objective's real losses (relativistic loss,
finite-difference R1/R2 on 25% of the batch, logit centring, OT loss, gradient normalisation).
Shapes: 32x32x4 latents, 1000 classes, one-step G (no timestep input) and a [CLS] critic.

MFU = model FLOPs per step / step time / peak, with the peak measured in the same run as the
throughput of a 8192^3 bf16 matmul (``torch.mm``), not a datasheet number.

FLOP count (multiply-add = 2 FLOPs; element-wise ops, norms and softmax not counted). For a DiT
of depth L, width w, T tokens (T = (32/2)^2 = 256 for the generator, T + 1 with the critic's
[CLS] token), patch p and C channels, one sample's forward is

    F = L (24 T w^2 + 4 T^2 w + 12 w^2) + 4 T p^2 C w + 4 w^2 (+ 2 T w p^2 C for the generator head)

(per block: qkv 6Tw^2, out-projection 2Tw^2, MLP 16Tw^2, attention scores and values 4T^2 w,
adaLN 12w^2; then patch embedding, head and final adaLN). Split it as F = F_lin + F_att with
F_att = 4 L T^2 w. A backward pass that computes weight and input gradients costs 2F; an
input-only backward (the frozen critic in the generator phase) costs F_lin + 2 F_att.
With batch B and R1/R2 fraction f = 0.25 the AF step is

    critic phase:    F_G (no-grad fake) + 3 (2B + 2fB) F_D (one D call on real, fake and
                     R1/R2's perturbed copies of fB each, fwd+bwd)
    generator phase: 3 F_G (fwd+bwd) + F_D + (F_D,lin + 2 F_D,att) (D on G(z), input grads)
                     + F_D (D on real, no grad)

all per sample times B: the model count of the method, the MFU column. With R1/R2 in their own call
(``gp_precision`` fp32 or fp16, so that the difference of two logits is not bf16 rounding) the
critic phase runs the same rows in two calls: [v, v + eps n] for the 2fB penalty samples at that
precision, whose base logits D(v) also serve the adversarial term, and the other 2(1 - f)B real and
fake samples at the run's. (Until 2026-12-03 the adversarial call ran all 2B rows and the penalty
call ran its base rows again, 10% more executed FLOPs than this count.)
``--small`` runs the same code on CPU with tiny sizes as a check.

Usage: python tools/bench_dit_mfu.py [--sizes B/2 XL/2] [--batch 192 64] [--attempts eager+gradnorm+timers
fused+cudnn+compile+bf16stream] [--profile]; an attempt is options joined by "+" (``ATTEMPT_OPTIONS``);
the first attempt of a size is the baseline of the speed-up column (the default list starts with
the old trainer defaults); ``--profile`` adds each attempt's GPU time by kernel kind.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch


def dit_forward_flops(depth: int, width: int, tokens: int, patch: int, channels: int, generator: bool):
    """(linear FLOPs, attention FLOPs) of one sample's forward pass (see the module docstring)."""
    lin = depth * (24 * tokens * width**2 + 12 * width**2) + 2 * tokens * patch**2 * channels * width + 4 * width**2
    if generator:
        lin += 2 * tokens * width * patch**2 * channels
    att = depth * 4 * tokens**2 * width
    return lin, att


def af_step_flops(size: str, shape, batch: int, gp_fraction: float = 0.25) -> float:
    """FLOPs of one AF step (module docstring)."""
    from onestep_dit.dit import parse_size

    depth, width, _, patch = parse_size(size)
    c, h, w = shape
    tokens = (h // patch) * (w // patch)
    g_lin, g_att = dit_forward_flops(depth, width, tokens, patch, c, True)
    d_lin, d_att = dit_forward_flops(depth, width, tokens + 1, patch, c, False)
    f_g, f_d = g_lin + g_att, d_lin + d_att
    critic = f_g + 3 * 2 * f_d + 3 * 2 * gp_fraction * f_d
    generator = 3 * f_g + f_d + (d_lin + 2 * d_att) + f_d
    return batch * (critic + generator)


def measured_peak(device: torch.device, n: int, dtype: torch.dtype, iters: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_engine(module, optim: dict, train, fused: bool, bf16_params: bool, grad_norm: bool, timers: bool):
    """Same as ``onestep.engine.make_engine`` (AdamW + DeepSpeed config of the trainer), with the
    options of torch's fused AdamW kernel, of DeepSpeed's bf16 mode (bf16 parameters and
    gradients, fp32 master weights in the optimizer) instead of autocast, and of DeepSpeed's
    default global gradient norm and throughput timer."""
    import deepspeed

    from onestep.engine import deepspeed_config

    config = deepspeed_config(train, 1)
    if grad_norm:
        config["zero_optimization"].pop("compute_grad_norm", None)
    if timers:
        config.pop("timers")
    if bf16_params:
        config["torch_autocast"]["enabled"] = False
        config["bf16"] = {"enabled": True}
    opt = torch.optim.AdamW(module.parameters(), **optim, **({"fused": True} if fused else {}))
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=config)
    return engine


# First match wins: Triton kernels come before copy/cast, whose keys their fused names can contain
# ("triton_red_fused__to_copy_add_..._layer_norm").
KERNEL_KINDS = (("attention", ("flash", "fmha", "attention", "cudnn")), ("matmul", ("gemm", "cutlass", "nvjet", "sm90_", "cublas")),
                ("optimizer", ("adam", "multi_tensor", "foreach")), ("fused (triton)", ("triton",)),
                ("copy/cast", ("copy", "memcpy", "memset")))


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other elementwise/reduction")


def profile_steps(step, device, first: int, steps: int = 2) -> None:
    """GPU kernel time of ``steps`` steps by kind and the 25 costliest kernels (lines ``PROFILE``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(first + i)
        sync(device)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in kernels)
    kinds: dict[str, float] = {}
    for e in kernels:
        kind = kernel_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.0) + e.self_device_time_total
    print(f"PROFILE GPU busy {total / steps / 1e3:.1f} ms/step", flush=True)
    waits = [e for e in events if e.device_type.name == "CPU"
             and any(k in e.key for k in ("Synchronize", "_local_scalar_dense", "EventSynchronize"))]
    for e in waits:  # host waits on the GPU: each one drains the queue and leaves the GPU idle after it
        print(f"PROFILE   host sync {e.key:30} x{e.count // steps:<4d} {e.cpu_time_total / steps / 1e3:8.1f} ms", flush=True)
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"PROFILE   {kind:28} {us / steps / 1e3:8.1f} ms {us / total:6.1%}", flush=True)
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]:
        print(f"PROFILE   {e.self_device_time_total / steps / 1e3:8.2f} ms x{e.count // steps:<5d} {e.key[:110]}", flush=True)


ATTEMPT_OPTIONS = {
    "eager": "no option: torch AdamW (foreach), SDPA picks its kernel, no compilation",
    "gpfp16": "objective.gp_precision=fp16: the finite-difference R1/R2 call under float16 autocast (default: fp32)",
    "gpfolded": "objective.gp_precision=autocast: R1/R2 folded into the bf16 adversarial call (biased; the old speed)",
    "fused": "torch's fused AdamW kernel",
    "flash": "backbone.attention=flash (SDPA flash kernel)",
    "cudnn": "backbone.attention=cudnn (SDPA cuDNN kernel)",
    "bf16stream": "backbone.residual_bf16=true (bf16 residual stream under autocast)",
    "compile": "torch.compile of each DiT block (regional: one graph reused by all blocks)",
    "cdtune": "with compile: inductor's coordinate-descent tuning of its fused kernels",
    "autotune": "with compile: mode max-autotune-no-cudagraphs (Triton GEMM templates with fused epilogues)",
    "compilemodel": "torch.compile of the whole network",
    "bf16params": "DeepSpeed bf16 mode (bf16 weights and gradients, fp32 master) instead of autocast",
    "zero0": "ZeRO stage 0 instead of 2 (diagnostic: the cost of ZeRO-2's gradient partitioning)",
    "gradnorm": "DeepSpeed's global gradient norm and its host check every step (the trainer skips them without clipping)",
    "timers": "DeepSpeed's throughput timer, which synchronises the device at every forward and step (off in the trainer)",
}


def run_attempt(size: str, batch: int, attempt: str, device, shape, steps: int, warmup: int, precision: str,
                profile: bool = False):
    from onestep.config import TrainConfig
    from onestep.interfaces import Batch, DataSpec, Networks, StepInfo
    from onestep_adversarial_flow.objective import AdversarialFlow, AdversarialFlowConfig
    from onestep_dit.dit import DiTBackbone, DiTConfig

    torch.manual_seed(0)
    spec = DataSpec(tuple(shape), num_classes=1000, kind="latents")
    options = set(attempt.split("+"))
    gp = "fp16" if "gpfp16" in options else "autocast" if "gpfolded" in options else "fp32"
    objective = AdversarialFlow(AdversarialFlowConfig(gp_precision=gp), spec=spec)
    unknown = options - set(ATTEMPT_OPTIONS)
    if unknown:
        raise ValueError(f"--attempts: unknown options {sorted(unknown)}; valid: {', '.join(ATTEMPT_OPTIONS)}")
    kernel = "flash" if "flash" in options else "cudnn" if "cudnn" in options else "auto"
    backbone = DiTBackbone(DiTConfig(size=size, attention=kernel, residual_bf16="bf16stream" in options))
    if "cdtune" in options:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
    mode = "max-autotune-no-cudagraphs" if "autotune" in options else "default"
    train = TrainConfig(batch_size=batch, zero_stage=0 if "zero0" in options else 2, precision=precision)
    fused = "fused" in options and device.type == "cuda"
    engines = {}
    for name, request in objective.networks().items():
        module = backbone.build(request, spec).to(device)
        if "compile" in options:  # the trainer's train.compile path: each block, one graph reused by all
            backbone.compile(module, mode=mode)
        if "compilemodel" in options:
            module.compile()
        engines[name] = build_engine(module, objective.optim_defaults(name), train, fused, "bf16params" in options,
                                     "gradnorm" in options, "timers" in options)
    nets = Networks(engines, plain={n: e.module for n, e in engines.items()})  # as the trainer hands them out
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(1000, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step(i: int) -> None:
        info = StepInfo(i, 1000)
        for phase in objective.phases():
            for name, e in engines.items():
                e.module.requires_grad_(name == phase.network)
            with autocast:
                loss, _ = objective.loss(phase.name, nets.training(phase.network), [Batch(x, y)], info)
            engines[phase.network].backward(loss)
            engines[phase.network].step()

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync(device)
    t1 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    dt = (time.perf_counter() - t1) / steps
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    if profile:
        profile_steps(step, device, warmup + steps)
    return {"step_s": dt, "samples_per_s": batch / dt, "warmup_s": t1 - t0, "max_mem_gib": mem,
            "flops_per_step": af_step_flops(size, shape, batch)}


def worker(a) -> None:
    """One attempt in a fresh process (DeepSpeed engines keep GPU memory alive after deletion)."""
    from onestep.distributed import init_process_group, resolve_device

    device = resolve_device("cpu" if a.small else "auto")
    init_process_group()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        r = run_attempt(a.sizes[0], a.batch[0], a.attempts[0], device, tuple(a.shape), a.steps, a.warmup, a.precision,
                        a.profile)
    except Exception as exc:  # an attempt that fails (OOM, kernel unavailable) is a result too
        r = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    print("RESULT " + json.dumps(r), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny sizes on CPU: a quick check of the code path")
    p.add_argument("--sizes", nargs="+", default=["B/2", "XL/2"])
    p.add_argument("--batch", nargs="+", type=int, default=[192, 64])
    p.add_argument("--attempts", nargs="+", default=["eager+gradnorm+timers", "fused+cudnn+compile+gradnorm+timers",
                                                     "fused+cudnn+compile", "fused+cudnn+compile+bf16stream"],
                   help="the first attempt of each size is the baseline of the speed-up column")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=1e9, help="skip remaining attempts past this wall time")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--profile", action="store_true", help="after timing, print each attempt's GPU time by kernel kind")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", nargs=3, type=int, default=[4, 32, 32], help=argparse.SUPPRESS)
    p.add_argument("--precision", default="bf16", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if a.small:
        a.shape, a.sizes, a.batch, a.precision, a.steps, a.warmup = [4, 8, 8], ["P/2"], [4], "fp32", 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not a.small else "cpu")

    def peak_now() -> float:
        if a.small:
            return measured_peak(device, 512, torch.float32, 5)
        return measured_peak(device, 8192, torch.bfloat16, 50)

    peak = peak_now()
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"measured matmul peak {peak / 1e12:.1f} TFLOP/s ({'bf16 8192^3' if not a.small else 'fp32 512^3'})")
    print(f"{'size':6} {'batch':>5} {'attempt':22} {'step ms':>8} {'samples/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'speed-up':>8} {'mem GiB':>7} {'warmup s':>8}")
    rows, start = [], time.perf_counter()
    for size, batch in zip(a.sizes, a.batch):
        baseline = None
        for attempt in a.attempts:
            if time.perf_counter() - start > a.budget_s:
                print(f"{size:6} {batch:5d} {attempt:22} skipped (budget)")
                continue
            cmd = [sys.executable, __file__, "--worker", "--sizes", size, "--batch", str(batch), "--attempts", attempt,
                   "--steps", str(a.steps), "--warmup", str(a.warmup), "--precision", a.precision,
                   "--shape", *map(str, a.shape)] + (["--small"] if a.small else []) + (["--profile"] if a.profile else [])
            with tempfile.TemporaryDirectory() as cache:  # a fresh inductor cache: no attempt reuses another's graphs
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
            profile = [line[8:] for line in out.stdout.splitlines() if line.startswith("PROFILE ")]
            if profile:
                print("\n".join(profile), flush=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            r = json.loads(lines[-1][7:]) if lines else {"error": f"worker exited {out.returncode}: {out.stderr[-300:]}"}
            if profile:
                r["profile"] = profile
            r.update(size=size, batch=batch, attempt=attempt)
            rows.append(r)
            if "error" in r:
                print(f"{size:6} {batch:5d} {attempt:22} failed: {r['error'][:160]}", flush=True)
                continue
            tflops = r["flops_per_step"] / r["step_s"]
            baseline = baseline or (attempt, r["step_s"])
            r.update(tflops=tflops / 1e12, mfu=tflops / peak, speedup=baseline[1] / r["step_s"],
                     baseline=baseline[0])
            print(f"{size:6} {batch:5d} {attempt:22} {r['step_s'] * 1e3:8.1f} {r['samples_per_s']:9.1f} "
                  f"{r['tflops']:8.1f} {r['mfu']:6.1%} {r['speedup']:7.2f}x {r['max_mem_gib']:7.1f} "
                  f"{r['warmup_s']:8.1f}", flush=True)
    # The same measurement again: how much the peak itself moved during the run (up to 5% seen on
    # an H100), which bounds how precisely the MFU column can be read.
    peak_after = peak_now()
    print(f"matmul peak re-measured after the attempts: {peak_after / 1e12:.1f} TFLOP/s "
          f"({peak_after / peak - 1:+.1%}); MFU above uses the first")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"peak_tflops": peak / 1e12, "peak_after_tflops": peak_after / 1e12, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
