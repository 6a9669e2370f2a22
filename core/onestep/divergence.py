"""Divergence: a non-finite loss, or a loss that raised on NaN inputs, becomes one
:class:`DivergenceError` that says what went wrong, what was saved and which setting to change
(the learning rate field that is in force, clipping, or the data)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from .checkpoint import latest
from .engine import resolve_optim
from .errors import DivergenceError


class DivergenceCheck:
    """Diagnoses divergence of one run: its config, data source, objective, the owner (objective
    or guidance) of each network, the networks' engines, the phases in training order and the
    run's checkpoint folder."""

    def __init__(self, config, source, objective, owner_of: dict[str, Any], engines: dict[str, Any],
                 phases: list, checkpoints: Path) -> None:
        self.config, self.source, self.objective = config, source, objective
        self.owner_of, self.engines, self.phases, self.checkpoints = owner_of, engines, phases, checkpoints

    def check_finite(self, logs: dict[str, Any], step: int) -> None:
        """Stop before logging or checkpointing a diverged step. Checked every ``log_every``
        steps and before each checkpoint (one host synchronisation each), since DeepSpeed skips
        non-finite steps only when it computes the gradient norm (``train.grad_clip > 0``)."""
        bad = [k for k, v in logs.items()
               if k.endswith("/loss") and not torch.isfinite(torch.as_tensor(v, dtype=torch.float32)).all()]
        if bad:
            phases = {k.rsplit("/", 1)[0] for k in bad}
            networks = [p.network for p in self.phases if p.name in phases]
            raise self._diverged(f"training diverged at step {step}: {', '.join(bad)} is not finite", networks,
                                 data_bad=self._training_data_nonfinite())

    def failed_on_nonfinite(self, phase, batches, exc: Exception, step: int) -> DivergenceError | None:
        """A loss that raised on NaN inputs (e.g. a solver that cannot schedule a NaN cost) is a
        divergence at ``step``, reported as one; None when its inputs were finite (a genuine bug)."""
        data_bad = any(not torch.isfinite(b.x).all() for b in batches)
        weights_bad = [n for n, e in self.engines.items() if any(not torch.isfinite(p).all() for p in e.module.parameters())]
        if not data_bad and not weights_bad:
            return None
        what = "the training batch holds NaN or inf" if data_bad else f"network {weights_bad[0]!r} has non-finite weights"
        detail = " ".join(str(exc).split())[:120]
        return self._diverged(f"training diverged at step {step}: phase {phase.name!r} failed "
                              f"({type(exc).__name__}: {detail}) because {what}", weights_bad or [phase.network],
                              data_bad=data_bad or self._training_data_nonfinite())

    def _training_data_nonfinite(self) -> bool:
        """Whether the training set holds NaN or inf (checked where it is one tensor)."""
        tensors = getattr(self.source.dataset("train"), "tensors", None)
        return bool(tensors) and tensors[0].is_floating_point() and not bool(torch.isfinite(tensors[0]).all())

    def _diverged(self, what: str, networks: list[str], data_bad: bool) -> DivergenceError:
        last = latest(self.checkpoints)
        saved = f"nothing after the last checkpoint{f' ({last})' if last else ''} was saved"
        if data_bad:
            advice = f"the training data ({self.config.data.name}) holds NaN or inf values: fix or filter them"
        else:
            t = self.config.train
            fields = dict.fromkeys(f"{self._lr_field(n)}={resolve_optim(n, self.owner_of[n].optim_defaults(n), t)['lr']:g}"
                                   for n in networks)
            advice = f"lower {' / '.join(fields)}" + (" or set train.grad_clip > 0" if not t.grad_clip else "")
        return DivergenceError(f"{what}; {saved}; {advice}")

    def _lr_field(self, network: str) -> str:
        """The config field that sets ``network``'s learning rate now (the most specific set one)."""
        t = self.config.train
        per_network = t.networks.get(network)
        if per_network is not None and per_network.lr is not None:
            return f"train.networks.{network}.lr"
        if t.optim.lr is not None:
            return "train.optim.lr"
        owner = self.owner_of[network]
        section = "objective" if owner is self.objective else "guidance"
        return f"{section}.lr" if "lr" in attrs.fields_dict(type(owner.config)) else "train.optim.lr"
