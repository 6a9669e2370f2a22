"""The training loop both autoencoders share: random minibatches of the training images with
Gaussian noise of the latent's shape drawn from one seeded generator, Adam with cosine decay, and
a resumable checkpoint every ``checkpoint_every`` steps (``onestep.files.save_partial``), so an
interrupted training continues to the same weights. Each autoencoder supplies its loss."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from onestep.files import load_partial, save_partial
from onestep.progress import bar as progress_bar

StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@torch.enable_grad()
def fit(net: nn.Module, params: Iterable[nn.Parameter], x: torch.Tensor, noise_shape: tuple[int, ...], recipe,
        device: torch.device, partial: Path, step_loss: StepLoss, log=None) -> dict[str, torch.Tensor]:
    """Train ``net`` (already on ``device``) on images ``x`` for ``recipe.steps`` steps of
    ``recipe.batch_size`` at ``recipe.lr``, drawing rows and noise from a generator seeded with
    ``recipe.seed``; ``step_loss(images, noise)`` gives the loss and the numbers to report (the
    first one is logged at each checkpoint). Returns the last step's numbers (empty when the
    training was already complete)."""
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.Adam(params, lr=recipe.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    start = load_partial(partial, g, network=net, optimizer=opt, scheduler=sched)
    data = x.to(device)
    batch = min(recipe.batch_size, len(x))
    numbers: dict[str, torch.Tensor] = {}
    net.train()
    bar = progress_bar(recipe.steps, "autoencoder", "step", initial=start)
    for step in range(start, recipe.steps):
        bar.update()
        rows = torch.randint(0, len(x), (batch,), generator=g)
        noise = torch.randn(batch, *noise_shape, generator=g).to(device)
        loss, numbers = step_loss(data[rows.to(device)], noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if done % recipe.checkpoint_every == 0 and done < recipe.steps:
            save_partial(partial, done, g, network=net, optimizer=opt, scheduler=sched)
            if log is not None:
                log(step=done, loss=float(next(iter(numbers.values()))))
    bar.close()
    net.eval().requires_grad_(False)
    return {k: v.detach() for k, v in numbers.items()}
