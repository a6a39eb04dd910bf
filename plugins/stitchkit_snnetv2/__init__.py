"""SN-Netv2 (Stitched ViTs are Flexible Vision Backbones) for stitchkit, shipped as a plugin.

Found only through the ``stitchkit`` entry point ``snnetv2``; see docs/snnetv2.md.
It reuses the SN-Net plugin (anchors, least-squares init, build pipeline) and
adds two-way stitching between two anchors, low-rank stitch layers and
resource-constrained (``ros``) sampling by default. Example build configs
ship in :data:`CONFIGS` (``digits.toml``).
"""

import pathlib

#: Directory of the example build configs shipped with the plugin.
CONFIGS = pathlib.Path(__file__).parent / "configs"
