"""Shared helpers for benchmark scripts: device description and table printing."""

from __future__ import annotations

import os
import platform
import time


def device_info() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    s = f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        s += f"; GPU: {torch.cuda.get_device_name(0)}"
    return s


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t0


def print_table(rows: list[dict], title: str = "") -> None:
    if title:
        print(f"\n## {title}")
    if not rows:
        return
    cols = list(rows[0])
    w = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(w[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (w[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)).ljust(w[c]) for c in cols) + " |")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)
