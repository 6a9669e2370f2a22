"""OT-NFM in a 16-dimensional autoencoder latent of MNIST, against OT-NFM in pixels (issue 15).

In pixels the global OT map from N(0, I_784) onto 6,000 digits per class is a quantiser of a
784-dimensional Gaussian with only 6,000 levels: its pairs keep almost nothing of the noise (they
save 83 of the 1,510 squared distance of independent pairs), so the regression target E[x | z] a
network can learn is about a class prototype (the board's OT-NFM grid, FID ~100). In a latent of a
few dimensions 6,000 levels quantise the Gaussian finely, the map is nearly smooth, and one network
evaluation plus the decoder draws sharp, varied digits. This script measures that on the CPU:

1. an MLP autoencoder 784 -> D -> 784 (MSE, a little latent noise), trained on the full MNIST train
   split (cached in OUT, reused when present);
2. the library's ``semidiscrete-ot`` coupler (per class) from N(0, I_D) onto the standardised
   training latents;
3. the OT-NFM regression (predict data, half of each batch at t = 1, the rest t ~ U(0, 1); the
   objective of plugins/ot-nfm written out for plain tensors), MLP, EMA 0.999;
4. decoded samples scored like the board (library classifier features, 10,000 samples against all
   10,000 held-out digits), with three references: the autoencoder's reconstructions of held-out
   digits (the decoder's ceiling), the coupling's own targets decoded (what a perfect map would
   give: training latents), and a Gaussian per class in the latent (a no-learning baseline).

Rows (``--rows``, the same MLP, batch and steps each): ``otnfm``; ``independent`` (OT-NFM on
independent pairs: the paper's mean collapse); ``fm`` (flow matching, scored at 1 and 50 Euler
steps: the multi-step baseline in the same latent); ``wflow`` (the library's W-Flow objective with
the MNIST preset's step rule, driving the MLP on latents); ``af`` (the library's Adversarial Flow
objective with the MNIST preset's settings, an MLP generator and critic).

    python tools/latent_otnfm_mnist.py [--dim 16] [--ae-steps 6000] [--steps 6000] [--width 512] [--rows ...] [--out DIR]

CPU, 2 threads: ~4 min for the autoencoder (cached in OUT), 1-2 min for the potentials, ~2 min per
row of 6,000 steps at width 512 (W-Flow ~13 min). Results: tools/RESULTS.md ("OT-NFM: why pixel space
gives prototypes, and the same objective in an autoencoder latent").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from onestep.api import compose
from onestep.components import build_components
from onestep.config import EvalConfig
from onestep.metrics.evaluate import held_out, score
from onestep.registry import Registry
from onestep_couplers.semidiscrete import SemiDiscreteOT, SemiDiscreteOTConfig

METRICS = ["fid", "precision-recall", "class-accuracy"]


def mlp(i: int, o: int, width: int = 1024, depth: int = 3) -> nn.Sequential:
    layers, d = [], i
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, o))


def autoencoder(x: torch.Tensor, dim: int, steps: int, path: Path) -> tuple[nn.Module, nn.Module]:
    enc, dec = mlp(784, dim), mlp(dim, 784)
    if path.is_file():
        state = torch.load(path, weights_only=True)
        enc.load_state_dict(state["enc"])
        dec.load_state_dict(state["dec"])
        return enc.eval(), dec.eval()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 1e-3)
    for step in range(steps):
        batch = x[torch.randint(0, len(x), (256,))]
        code = enc(batch)
        rec = torch.tanh(dec(code + 0.05 * torch.randn_like(code)))  # latent noise: a smoother decoder
        loss = F.mse_loss(rec, batch) + 1e-3 * code.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 1000 == 0:
            print(f"autoencoder step {step}: loss {loss.item():.4f}", flush=True)
    torch.save({"enc": enc.state_dict(), "dec": dec.state_dict()}, path)
    return enc.eval(), dec.eval()


def _draw(latents: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A random training latent of each row's class (independent pairs)."""
    out = torch.empty(len(labels), latents.shape[1])
    for c in labels.unique().tolist():
        rows = labels == c
        own = latents[y == c]
        out[rows] = own[torch.randint(0, len(own), (int(rows.sum()),))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--ae-steps", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="otnfm,independent,fm", help="otnfm, independent (mean-collapse control), fm (50-step baseline), wflow (the library's W-Flow objective), af (the library's AF objective)")
    ap.add_argument("--out", default="runs/latent-otnfm-mnist")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    registry = Registry.discover()
    source = build_components(compose(objective="flow-matching", backbone="mlp", data="mnist-full",
                                      registry=registry), registry).source
    train = source.dataset("train")
    x = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    y = torch.tensor([int(train[i][1]) for i in range(len(train))])
    enc, dec = autoencoder(x, a.dim, a.ae_steps, out / f"autoencoder-d{a.dim}-{a.ae_steps}.pt")
    with torch.no_grad():
        latents = torch.cat([enc(x[i:i + 4096]) for i in range(0, len(x), 4096)])
    mu, sd = latents.mean(0), latents.std(0)

    def decode(code: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.tanh(dec(code * sd + mu)).view(-1, 1, 28, 28)

    ref, ref_y = held_out(source, 10000)
    ev, cache, results = EvalConfig(metrics=METRICS, num_samples=len(ref)), {}, {}

    def report(name: str, samples: torch.Tensor) -> None:
        r = score(samples, ref_y, ref, ref_y, source, METRICS, ev, registry, cache)
        results[name] = {k.split("[")[0]: round(v, 4) for k, v in r.items()}
        print(name, json.dumps(results[name]), flush=True)

    with torch.no_grad():
        report("autoencoder reconstructions of held-out digits (ceiling)",
               torch.cat([decode((enc(ref[i:i + 2000].flatten(1)) - mu) / sd) for i in range(0, len(ref), 2000)]))
    std_latents = (latents - mu) / sd
    gauss = torch.empty(len(ref), a.dim)
    for c in range(10):
        own = std_latents[y == c]
        cov = torch.cov(own.T) + 1e-5 * torch.eye(a.dim)
        gauss[ref_y == c] = torch.distributions.MultivariateNormal(own.mean(0), cov).sample((int((ref_y == c).sum()),))
    report("Gaussian per class in the latent (no learning)", decode(gauss))

    coupler = SemiDiscreteOT(SemiDiscreteOTConfig(fit_steps=300, fit_batch=2048))
    coupler.set_points(std_latents, y)
    started = time.time()
    coupler.fit(300, torch.Generator().manual_seed(0))
    print(f"potentials fitted in {time.time() - started:.0f} s", flush=True)

    def pair(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """T(z) per row (labels sorted or not), one product per class."""
        target = torch.empty_like(z)
        for c in range(10):
            rows = labels == c
            if rows.any():
                target[rows] = coupler.points[coupler.assign_group(z[rows], coupler.group_of_label[c])]
        return target

    def one_hot(labels):
        return F.one_hot(labels, 10).float()

    def fit(net: nn.Module, opt, step_loss, name: str, clip: float = 0.0) -> nn.Module:
        """``a.steps`` optimizer steps of ``step_loss(step)``, an EMA (0.999) of the weights, which
        ``net`` holds at the end."""
        ema = [p.detach().clone() for p in net.parameters()]
        started = time.time()
        for step in range(a.steps):
            loss = step_loss(step)
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            with torch.no_grad():
                for e, p in zip(ema, net.parameters()):
                    e.lerp_(p, 1e-3)
            if step % 2000 == 0:
                print(f"{name} step {step}: loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
        with torch.no_grad():
            for e, p in zip(ema, net.parameters()):
                p.copy_(e)
        return net

    def train(kind: str) -> nn.Module:
        """The same MLP, batch and steps for every row: ``otnfm`` (OT pairs), ``independent`` (OT-NFM's
        mean-collapse control) or ``fm`` (flow matching's velocity on independent pairs)."""
        net = mlp(a.dim + 1 + 10, a.dim, width=a.width, depth=4)

        def step_loss(_step):
            labels = torch.randint(0, 10, (512,))
            z = torch.randn(512, a.dim)
            t = torch.rand(512)
            if kind == "fm":
                x1 = _draw(std_latents, y, labels)
                tt = t[:, None]
                return (net(torch.cat([(1 - tt) * z + tt * x1, tt, one_hot(labels)], 1)) - (x1 - z)).pow(2).mean()
            x1 = pair(z, labels) if kind == "otnfm" else _draw(std_latents, y, labels)
            t[::2] = 1.0  # one_step_share 0.5
            tt = t[:, None]
            mapped = (1 - tt) * z + tt * net(torch.cat([z, tt, one_hot(labels)], 1))
            return (mapped - ((1 - tt) * z + tt * x1)).pow(2).mean()

        return fit(net, torch.optim.Adam(net.parameters(), 1e-3), step_loss, kind)

    def train_wflow():
        """The library's W-Flow objective (the MNIST preset's step rule: 128 per class, bank 1,024,
        R = [0.05, 0.01], normalised velocity, two-batch self term, AdamW (0.9, 0.95), clip 2) driving
        the same MLP on the latents."""
        from onestep.interfaces import Batch, DataSpec, Networks, StepInfo
        from onestep_wflow.objective import WFlow, WFlowConfig

        spec = DataSpec((a.dim,), num_classes=10, kind="latents")
        obj = WFlow(WFlowConfig(epsilon=[0.05, 0.01], per_class=128, bank_per_class=1024), spec=spec)

        class Generator(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = mlp(a.dim + 10, a.dim, width=a.width, depth=4)

            def forward(self, noise, y=None):
                return self.body(torch.cat([noise, one_hot(y)], 1))

        gen = Generator()

        def step_loss(step):
            rows = torch.randint(0, len(std_latents), (1280,))
            return obj.loss("generator", Networks({"generator": gen}), [Batch(std_latents[rows], y[rows])],
                            StepInfo(step, a.steps))[0]

        fit(gen, torch.optim.AdamW(gen.parameters(), 1e-3, betas=(0.9, 0.95)), step_loss, "wflow", clip=2.0)
        return lambda noise, y: obj.sample(Networks({"generator": gen}), noise, y, 1)

    def train_af():
        """The library's Adversarial Flow objective with the MNIST preset's settings (residual
        generator, relativistic loss, finite-difference R1/R2, OT weight 0.2 -> 0.005 over 2,000
        iterations, lr 3e-4, betas (0, 0.9)) on an MLP generator and an MLP critic of the same size;
        one critic and one generator update per step, batch 256 each."""
        from onestep.interfaces import Batch, DataSpec, Networks, StepInfo
        from onestep_adversarial_flow.objective import AdversarialFlow, AdversarialFlowConfig

        spec = DataSpec((a.dim,), num_classes=10, kind="latents")
        obj = AdversarialFlow(AdversarialFlowConfig(lr=3e-4, ot_decay_steps=2000), spec=spec)

        class Conditional(nn.Module):
            def __init__(self, out: int):
                super().__init__()
                self.body, self.out = mlp(a.dim + 10, out, width=a.width, depth=4), out

            def forward(self, x, y=None):
                h = self.body(torch.cat([x, one_hot(y)], 1))
                return h if self.out > 1 else h[:, 0]

        gen, critic = Conditional(a.dim), Conditional(1)
        nets = Networks({"generator": gen, "critic": critic})
        opt_c = torch.optim.AdamW(critic.parameters(), **obj.optim_defaults("critic"))
        opt_g = torch.optim.AdamW(gen.parameters(), **obj.optim_defaults("generator"))

        def batch():
            rows = torch.randint(0, len(std_latents), (256,))
            return [Batch(std_latents[rows], y[rows])]

        def step_loss(step):
            info = StepInfo(step, a.steps)
            loss_c, _ = obj.loss("critic", nets.training("critic"), batch(), info)
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            return obj.loss("generator", nets.training("generator"), batch(), info)[0]

        fit(gen, opt_g, step_loss, "af")
        return lambda noise, y: obj.sample(Networks({"generator": gen, "critic": critic}), noise, y, 1)  # G = z - g

    z, grid = torch.randn(len(ref), a.dim), None
    for kind in a.rows.split(","):
        if kind == "af":
            gen = train_af()
            with torch.no_grad():
                report(f"Adversarial Flow in the latent, {a.steps} steps, width {a.width} (1 NFE + decoder)",
                       decode(gen(z, ref_y)))
            continue
        if kind == "wflow":
            gen = train_wflow()
            with torch.no_grad():
                report(f"W-Flow in the latent, {a.steps} steps, width {a.width} (1 NFE + decoder)", decode(gen(z, ref_y)))
            continue
        net = train(kind)
        with torch.no_grad():
            if kind == "fm":
                for nfe in (1, 50):
                    x = z.clone()
                    for i in range(nfe):
                        t = torch.full((len(x), 1), i / nfe)
                        x = x + net(torch.cat([x, t, one_hot(ref_y)], 1)) / nfe
                    report(f"flow matching in the latent, {nfe} Euler steps", decode(x))
                continue
            samples = decode(net(torch.cat([z, torch.ones(len(z), 1), one_hot(ref_y)], 1)))
            report(f"{'OT-NFM' if kind == 'otnfm' else 'OT-NFM with independent pairs'} in the latent, {a.steps} steps, "
                   f"width {a.width} (1 NFE + decoder)", samples)
            if kind == "otnfm":
                grid = samples
    report("the coupling's targets T(z) decoded (a perfect map)", decode(pair(torch.randn(len(ref), a.dim), ref_y)))
    (out / "results.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    try:
        import torchvision

        if grid is not None:
            torchvision.utils.save_image((grid[:100] + 1) / 2, out / "otnfm-latent-grid.png", nrow=10)
    except Exception as err:  # a CPU torch beside a torchvision that cannot load: the numbers still count
        print(f"grid not written: {err}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
