"""The machine a lab run measured on, read from the machine itself (never written as a literal)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 6: "six", 8: "eight"}


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    """Names of the NVIDIA GPUs visible here (nvidia-smi), or none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def describe() -> dict:
    """Cores, CPU model, GPUs, architecture and host of this machine."""
    return {
        "cores": cpu_cores(),
        "cpu": _cpu_model(),
        "gpus": _gpus(),
        "arch": platform.machine(),
        "host": platform.node(),
    }


def cores_phrase(machine: dict | str | None, noun: str = "cores") -> str:
    """'two cores' (or '16 cores') from a describe() record; older string records pass through."""
    if not isinstance(machine, dict):
        return f"this machine's {noun}"
    n = machine["cores"]
    return f"{_WORDS.get(n, str(n))} {noun if n != 1 else noun.rstrip('s')}"


def summary(machine: dict | str | None) -> str:
    """One line for reports: cores, CPU and GPU."""
    if not isinstance(machine, dict):
        return str(machine or "unknown machine")
    gpu = ", ".join(machine["gpus"]) if machine["gpus"] else "no GPU"
    return f"{machine['cores']} CPU cores ({machine['cpu']}, {machine['arch']}), {gpu}"
