"""How many threads the kernels run with: the one default (`default_threads`) and the one range check
(`resolve_threads`) of every `n_threads` in tilellm (the kernel libraries and the backend registry use these)."""
from __future__ import annotations

import os
import subprocess
import sys

MAX_THREADS = 1024  # the C pool caps lower (256); more than this is surely a mistake


def default_threads() -> int:
    """Physical cores this process may use (llama.cpp's default thread count).

    Hyper-threads share one core's FMA units, so using them for matmul only adds contention.
    Linux: distinct (package, core) pairs among the CPUs in our affinity mask; macOS: the
    performance cores. Falls back to the logical CPU count.
    """
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = set(range(os.cpu_count() or 1))
    if sys.platform == "darwin":
        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            try:
                out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=2)
                n = int(out.stdout.strip())
                if n > 0:
                    return n
            except (OSError, ValueError, subprocess.SubprocessError):
                continue
        return max(1, len(allowed))
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu, pkg, core = None, "0", None
            for line in list(f) + [""]:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    cpu = int(val) if val.isdigit() else None
                elif key == "physical id":
                    pkg = val
                elif key == "core id":
                    core = val
                elif not key:  # blank line ends one processor's block
                    if cpu is not None and core is not None and cpu in allowed:
                        cores.add((pkg, core))
                    cpu, pkg, core = None, "0", None
    except OSError:
        pass
    n = len(cores) if cores else len(allowed)
    return max(1, min(n, len(allowed)))


def resolve_threads(n_threads: int | None) -> int:
    """`n_threads` checked to be an integer in 1..MAX_THREADS, or the default for None."""
    if n_threads is None:
        return default_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or not 1 <= n_threads <= MAX_THREADS:
        raise ValueError(f"n_threads must be an integer in 1..{MAX_THREADS} (or None for the physical cores), "
                         f"got {n_threads!r}")
    return n_threads
