"""onestep objective plugin: OT-NFM, a one-step neural flow map trained on OT-coupled pairs."""
