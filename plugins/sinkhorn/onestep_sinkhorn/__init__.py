"""onestep plugin: log-domain entropic OT (Sinkhorn) solver, barycentric projection, debiased
Sinkhorn divergence and the ``sinkhorn`` coupler."""
from .divergence import debiased_potentials, sinkhorn_divergence
from .groups import Groups
from .projection import SinkhornBarycentricProjection, project_stacked
from .solver import SinkhornResult, SinkhornSolver, squared_cost

__all__ = ["Groups", "SinkhornBarycentricProjection", "SinkhornResult", "SinkhornSolver", "debiased_potentials",
           "project_stacked", "sinkhorn_divergence", "squared_cost"]
