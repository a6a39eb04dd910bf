"""SN-Net (Stitchable Neural Networks) for stitchkit, shipped as a plugin.

Found only through the ``stitchkit`` entry point ``snnet``; see docs/snnet.md.
Example build configs ship in :data:`CONFIGS` (``digits.toml``,
``equal-storage-digits.toml``, ``deit-imagenet.toml``).
"""

import pathlib

#: Directory of the example build configs shipped with the plugin.
CONFIGS = pathlib.Path(__file__).parent / "configs"
