"""stitchkit-procrustes: the orthogonal-Procrustes stitch initializer, an example external stitchkit plugin."""

from .initializer import ProcrustesInitializer, solve_procrustes

__all__ = ["ProcrustesInitializer", "solve_procrustes"]
