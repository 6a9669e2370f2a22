"""onestep objective plugin: torchcfm's OT-CFM, the external peer of the comparisons."""
