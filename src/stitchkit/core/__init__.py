"""The contracts every other layer builds on: plain descriptions (spec), limits, the plugin
interfaces and hook specifications, the registry, component options and signature checks, the
training-plan dataclasses, the Protocols the contracts type pools and registries with, and errors.
It imports nothing else from stitchkit (the registry loads the builtin registration by module name).
"""
