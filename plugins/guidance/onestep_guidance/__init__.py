"""Guidance components for onestep: ``classifier`` (flow-based classifier guidance, AF Sec. 3.5)
and the objective ``noised-classifier`` that pre-trains its time-conditional classifier."""
