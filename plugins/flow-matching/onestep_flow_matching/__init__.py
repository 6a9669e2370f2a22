"""onestep objective plugin: flow matching (multi-step baseline)."""
