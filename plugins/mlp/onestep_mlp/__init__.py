"""onestep backbone plugin: residual MLP."""
