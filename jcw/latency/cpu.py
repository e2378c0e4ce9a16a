"""Which CPU a host table was measured on, so that a table used on another machine says so."""
from __future__ import annotations

import os
import platform
from pathlib import Path

# the instruction-set features that change which kernels a runtime picks (XNNPACK runs sparse only without AVX)
FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "neon", "asimd", "sve")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def processor_name() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# /proc/cpuinfo fields that tell CPU generations apart where a virtual machine reports a generic model name ("AMD
# EPYC" covers chips that time these tables 2x apart): x86 family/model/stepping, or an ARM core's implementer/part
GENERATION = ("cpu family", "model", "stepping", "CPU implementer", "CPU part")


def cpu_identity() -> dict:
    """This machine's CPU model and generation, its kernel-relevant flags and its core count."""
    present: set[str] = set()
    generation: dict[str, str] = {}
    for line in _cpuinfo():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("flags", "Features"):
            present.update(value.split())
        elif key in GENERATION:
            generation.setdefault(key, value)
    return {"model": processor_name(), "generation": " ".join(f"{k} {v}" for k, v in generation.items()),
            "flags": [f for f in FLAGS if f in present], "cores": os.cpu_count()}


def cpu_mismatch(meta: dict) -> str:
    """'' if a measured table's CPU is this one, else what differs (older tables kept only some of the keys)."""
    recorded = meta.get("cpu") or {"model": meta.get("processor"), "cores": meta.get("made", {}).get("cores")}
    here = cpu_identity()
    differs = [f"{key}: {recorded[key]} there, {here[key]} here" for key in ("model", "generation", "flags", "cores")
               if recorded.get(key) is not None and recorded[key] != here[key]]
    return ", ".join(differs)
