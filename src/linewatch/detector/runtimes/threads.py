"""How many intra-op threads a scoring or training process uses: the one place that decides it.

The CPUs a process may really use are the fewer of (a) the CPUs in its affinity mask
(``os.sched_getaffinity``: ``taskset``, ``docker --cpuset-cpus``) and (b) its cgroup CPU quota (``docker --cpus``,
Kubernetes CPU limits): cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) or cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = none), the smallest along the process's cgroup path up to the
root, since every ancestor's quota applies. A quota of q CPUs gives ``floor(q)`` threads, at least 1 (more
threads than the quota would be throttled every period). torch's own default counts the machine's cores and
ONNX Runtime's counts them too, so both oversubscribe a container or a host that runs several workers.

Those CPUs are split evenly among the processes that share them: ``linewatch up --workers N`` sets
``detector.workers_on_host`` to N for its workers and its trainer. torch (:func:`apply_torch_threads`) and ONNX
Runtime sessions (:mod:`.onnx_runtime`) both take their thread count from :func:`intra_op_threads`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(directory: Path) -> float | None:
    """CPUs allowed by ``directory/cpu.max`` (cgroup v2), None when there is no file or no limit."""
    text = _read(directory / "cpu.max")
    if not text:
        return None
    parts = text.split()
    if parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        log.warning("%s: unreadable cpu.max %r; ignored", directory, text)
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(directory: Path) -> float | None:
    """CPUs allowed by ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in ``directory`` (cgroup v1); None: no limit."""
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        log.warning("%s: unreadable CFS quota %r / period %r; ignored", directory, quota, period)
        return None
    return q / p if q > 0 and p > 0 else None


def _along(base: Path, relative: str) -> list[Path]:
    """``base/relative`` and each of its ancestors up to ``base``, deepest first (only those that exist)."""
    here = base / relative.strip("/")
    out = []
    while True:
        if here.is_dir():
            out.append(here)
        if here == base or base not in here.parents:
            break
        here = here.parent
    return out


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The smallest CPU quota (in CPUs, may be fractional) on this process's cgroup path, v2 or v1; None if none.

    ``proc_cgroup`` is ``/proc/self/cgroup`` (lines ``<id>:<controllers>:<path>``; ``0::<path>`` is v2);
    ``cgroup_root`` the cgroup file system's mount point. Both are arguments so that tests can lay out a fake
    cgroup tree. Unreadable files count as no quota.
    """
    text = _read(proc_cgroup) or "0::/"
    quotas: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2: the unified hierarchy, at the root or (hybrid set-ups) under unified/
            for base in (cgroup_root, cgroup_root / "unified"):
                quotas += [q for d in _along(base, path) if (q := _v2_quota(d)) is not None]
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu", "cpu,cpuacct"):
                base = cgroup_root / name
                if base.is_dir():
                    quotas += [q for d in _along(base, path) if (q := _v1_quota(d)) is not None]
                    break
    return min(quotas) if quotas else None


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may use: min(affinity mask size, floor(cgroup quota)), at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    cpus = affinity if quota is None else min(affinity, max(1, math.floor(quota)))
    return max(1, cpus)


def intra_op_threads(processes: int = 1, cpus: int | None = None) -> int:
    """Intra-op threads for each of ``processes`` processes sharing ``cpus`` (default :func:`available_cpus`):
    ``max(1, cpus // processes)``.

    Raises:
        ValueError: ``processes`` < 1.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // processes)


def apply_torch_threads(threads: int) -> int:
    """Set torch's intra-op threads to ``threads`` (where it differs) and return it."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
