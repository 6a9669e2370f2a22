"""Adversarial Flow (arXiv 2511.22475) as a onestep objective: ``adversarial-flow``."""
