"""Suite-wide settings.

One torch thread: the models here are tiny, and on a 2-core machine shared
with other processes, intra-op threads spin against each other and make
every test many times slower without changing any result.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
