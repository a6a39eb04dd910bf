"""SN-Net (Stitchable Neural Networks) for stitchkit, shipped as a plugin.

Found only through the ``stitchkit`` entry point ``snnet``; see docs/snnet.md.
"""
