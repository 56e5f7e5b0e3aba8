"""The machine a figure was measured on, in words: every timing names it (the CPU changes between
sessions)."""
import os

from config import usable_cpus

# the best int8 instructions first: what the C engine's kernel choice turns on
_ISA_FLAGS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"),
              ("asimddp", "NEON dot product"))


def cpu():
    """e.g. 'AMD EPYC, AVX2 (no AVX-512), 2 cores': the model name, its best int8 ISA, the usable cores."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and name == "unknown CPU":
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = next((label for flag, label in _ISA_FLAGS if flag in flags), "")
    if isa == "AVX2":
        isa = "AVX2 (no AVX-512)"
    cores = usable_cpus()
    return ", ".join(part for part in (name, isa, f"{cores} core{'s' * (cores > 1)}") if part)
