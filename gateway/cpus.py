"""How many CPUs this process may use: its affinity, capped by a CPU quota."""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

# A container's CPU quota is a cgroup's cpu.max (v2) or cpu.cfs_quota_us over
# cpu.cfs_period_us (v1). os.cpu_count() and sched_getaffinity() ignore it (so
# does Python 3.13's os.process_cpu_count()): a container limited to 2 CPUs on
# a 64-CPU host would otherwise start 64 workers.
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
_V1_CONTROLLER_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")

_Lines = list[tuple[str, str, str]]  # /proc/self/cgroup: id, controllers, path


def usable_cpus(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = PROC_CGROUP) -> int:
    """min(CPU affinity, ceil(quota / period)), and at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cpu_quota(cgroup_root: str, proc_cgroup: str = PROC_CGROUP) -> float | None:
    """The CPUs' worth of time this process's cgroup may use, e.g. 1.5; None when
    there is no quota, or none that can be read.

    The smallest quota set on the cgroup or any of its ancestors under
    `cgroup_root` counts: a limit on a parent binds its children too.
    """
    root = Path(cgroup_root)
    lines = _cgroup_lines(proc_cgroup)
    quotas = [_v2_quota(directory / "cpu.max") for directory in _v2_cgroup(root, lines)]
    quotas += [_v1_quota(directory) for directory in _v1_cgroup(root, lines)]
    found = [quota for quota in quotas if quota is not None]
    return min(found, default=None)


def _v2_cgroup(root: Path, lines: _Lines) -> list[Path]:
    """The unified hierarchy's "0::/path" as directories from leaf to root; the
    root alone when /proc/self/cgroup cannot be read."""
    if not lines:
        return [root]
    for hierarchy, controllers, path in lines:
        if hierarchy == "0" and controllers == "":
            return _leaf_to_root(root, path)
    return []


def _v1_cgroup(root: Path, lines: _Lines) -> list[Path]:
    """The v1 cpu controller's cgroup, under each name its mount commonly has."""
    for _, controllers, path in lines:
        if "cpu" in controllers.split(","):
            mounts = dict.fromkeys((controllers, *_V1_CONTROLLER_DIRS))
            return [d for mount in mounts for d in _leaf_to_root(root / mount, path)]
    return []


def _cgroup_lines(proc_cgroup: str) -> _Lines:
    """/proc/self/cgroup as (hierarchy id, controllers, path); [] if unreadable."""
    try:
        text = Path(proc_cgroup).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    lines = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            lines.append((fields[0], fields[1], fields[2]))
    return lines


def _leaf_to_root(mount: Path, path: str) -> list[Path]:
    """mount/a/b, mount/a, mount. Only the mount itself when the path climbs out
    of it (a cgroup outside this cgroup namespace shows as /../x)."""
    parts = PurePosixPath(path).parts[1:] if path.startswith("/") else ()
    if ".." in parts:
        parts = ()
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_quota(cpu_max: Path) -> float | None:
    """cpu.max holds "$QUOTA $PERIOD" in microseconds, or "max $PERIOD"."""
    fields = _read(cpu_max).split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    """cpu.cfs_quota_us is -1 when unlimited."""
    quota = _read(directory / "cpu.cfs_quota_us").strip()
    period = _read(directory / "cpu.cfs_period_us").strip()
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    if not (quota.isdigit() and period.isdigit()):
        return None  # "-1", or not a number at all
    if int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return ""
