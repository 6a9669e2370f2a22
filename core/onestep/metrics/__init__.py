"""Metrics (built-in ones are registered by onestep.builtin)."""
