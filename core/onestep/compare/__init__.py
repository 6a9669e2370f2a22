"""Comparing methods: ``onestep compare`` (objectives trained one after another in this process,
one table and one figure) and ``onestep board`` (the quality board: methods trained concurrently
from their presets, scored at wall-clock marks, FID against minutes). Both sit above the trainer
and the metrics; nothing below imports them."""
