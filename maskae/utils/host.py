"""What this CPU can do fast: its model name and the vector units (AVX2, AVX-512, VNNI, AMX, ARM dot
product and bf16) that decide which int8 and bf16 kernels pay, so that exports and benchmarks choose
and report them instead of assuming a host."""

from __future__ import annotations

import logging
import platform
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimddp", "bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo ("Features" on ARM); empty where the file is missing."""
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def has_bf16_unit() -> bool:
    """A native bf16 matmul unit: AMX or AVX-512 BF16 on x86, the BF16 extension on ARM."""
    flags = cpu_flags()
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def has_amx() -> bool:
    """Intel's AMX tile unit (bf16 matmuls ~6x fp32's), which some bf16 kernels need to beat fp32."""
    return "amx_bf16" in cpu_flags()


def bf16_unit_or_warn(what: str) -> bool:
    """Whether bf16 pays on this CPU; where it does not, one warning that `what` runs in fp32 instead."""
    if has_bf16_unit():
        return True
    logger.warning("this CPU has no bf16 unit (AMX, AVX-512 BF16 or ARM BF16), so %s runs in fp32", what)
    return False


def int8_kernels() -> str:
    """The int8 kernel family this CPU runs: "amx", "avx512_vnni", "avx512", "avx2", "arm64" or "generic".

    Without VNNI (or AMX, or ARM's dot product) the u8*s8 products saturate in 16 bits, so ONNX Runtime's
    quantizer must reduce the weights' range to 7 bits there (`reduce_range`)."""
    flags = cpu_flags()
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    return "generic"


def needs_reduced_range(kernels: str | None = None) -> bool:
    return (kernels or int8_kernels()) in ("avx512", "avx2", "generic")


def describe_host() -> str:
    """One line for benchmark output: CPU model, vector ISA and torch's thread count."""
    isa = [name for name in ISA_FLAGS if name in cpu_flags()]
    return f"{cpu_model()} ({', '.join(isa) or 'no AVX2'}), {torch.get_num_threads()} threads"
