"""Guidance components for onestep: ``classifier`` (flow-based classifier guidance, AF Sec. 3.5)."""
