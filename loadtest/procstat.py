"""CPU time and memory of one process, read from Linux's /proc.

CPU time is the steadiest figure on a shared machine: a process that waits for a core it
does not get is slower by the clock but uses no more CPU per request.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (its own, not its children's)."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def machine_busy_seconds() -> float:
    """CPU time every core of this machine has spent busy so far (user, nice, system, irq,
    softirq: not idle, I/O wait, or time the hypervisor gave to other machines): what the
    load generator, the database and the proxy used together, other processes included."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()  # "cpu  user nice system idle iowait irq softirq steal"
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
    return (user + nice + system + irq + softirq) / _TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # "VmHWM:    123456 kB"
    return 0


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in KiB."""
    return _status_kib(pid, "VmHWM")


def rss_kib(pid: int) -> int:
    """The process's resident set size now (VmRSS), in KiB."""
    return _status_kib(pid, "VmRSS")


def open_fds(pid: int) -> int:
    """How many file descriptors the process holds open."""
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
