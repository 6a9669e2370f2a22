"""DiT backbones for onestep: ``dit`` and the deep-recursive ``dit-recursive``."""
