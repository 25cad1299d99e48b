"""What this machine offers that changes how a run is set up: a CUDA device, native bf16 on the CPU."""

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Gpu:
    """The CUDA devices this process sees: the first one's name and memory, and how many there are."""

    name: str
    memory: int  # bytes, as torch reports the card's total
    count: int
    bf16: bool


# A driver file exists wherever a GPU could: checked first so a CPU machine never imports torch for this.
DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def gpu() -> Gpu | None:
    """The GPUs torch can use, or None on a CPU-only machine (or with CUDA_VISIBLE_DEVICES empty)."""
    if not any(Path(path).exists() for path in DRIVER_FILES) or not has_cuda():
        return None
    import torch

    props = torch.cuda.get_device_properties(0)
    return Gpu(props.name, props.total_memory, torch.cuda.device_count(), torch.cuda.is_bf16_supported())


LARGE_CARD = 35e9  # bytes: an A100 40 GB and up takes trainer=a100, anything smaller trainer=l4


def if_vllm(available: Any, missing: Any) -> Any:
    """The first value where vLLM can generate (an NVIDIA driver and vLLM installed), else the second (a resolver)."""
    import importlib.util

    driver = any(Path(path).exists() for path in DRIVER_FILES[:2])
    return available if driver and importlib.util.find_spec("vllm") is not None else missing


def gpu_trainer(card: Gpu) -> str:
    """The trainer preset for this card: a100 (no forced activation checkpointing) from 35 GB, else l4."""
    return "a100" if card.memory >= LARGE_CARD else "l4"
