"""Claire: Causal Logic in AI REasoning -- LoRA SFT of small LLMs on causality traces."""

import os
from pathlib import Path

# Set before torch starts OpenMP: spin-waiting threads make shared 2-core machines several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"


class ClaireError(Exception):
    """A problem the user can fix; its message is one line naming what is wrong and what would be right."""


def cache_root() -> Path:
    """Where converted models and library schemas are cached: $CLAIRE_CACHE, else ~/.cache/claire."""
    return Path(os.environ.get("CLAIRE_CACHE", Path.home() / ".cache" / "claire"))
