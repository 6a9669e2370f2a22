"""onestep: one-step generative models (noise -> sample in one network evaluation).

The core defines the plugin contract (:mod:`onestep.interfaces`, :mod:`onestep.hookspecs`), the
registry, configs, data, the DeepSpeed trainer, sampling and evaluation. Methods live in plugins.
"""
__version__ = "0.1.0"
