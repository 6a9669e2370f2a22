"""onestep objective plugin: W-Flow (one-step generator trained on a Sinkhorn-divergence
Wasserstein gradient flow, arXiv 2605.11755)."""
