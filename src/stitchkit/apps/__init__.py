"""User-facing jobs: the planner, the cost model, budget selection, reports, method comparison and
the demo. It may import every layer below (:mod:`~stitchkit.engine` and down), never
:mod:`stitchkit.cli`.
"""
