"""What this machine offers that changes how a run is set up: a CUDA device, native bf16 on the CPU."""

import re
from pathlib import Path
from typing import Any


def cpu_has_bf16(cpuinfo_file: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it torch emulates bf16 ~24x slower."""
    try:
        cpuinfo = cpuinfo_file.read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def if_cpu_bf16(native: Any, emulated: Any) -> Any:
    """The first value on a CPU with native bf16, else the second (the resolver of the CPU presets)."""
    return native if cpu_has_bf16() else emulated


def has_cuda() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()
