"""A pool and its descendants as torch modules: rows, stitch layers (full and low-rank), descendant
modules, meta-device skeletons, measurement and the features data-driven initializers fit. It
imports only :mod:`stitchkit.core`.
"""
