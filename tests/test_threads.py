"""The intra-op thread count every runtime and the trainer use: CPUs from affinity and the cgroup quota (v2 and v1
file layouts laid out in a temporary folder), split among the workers of a host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linewatch.detector.runtimes.threads import available_cpus, cgroup_cpu_quota, intra_op_threads


def _v2(root: Path, proc: Path, path: str, files: dict[str, str]) -> None:
    proc.write_text(f"0::{path}\n")
    for rel, text in files.items():
        target = root / rel.strip("/") / "cpu.max"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    _v2(root, proc, "/kubepods/pod1/c1", {"/": "max 100000\n", "/kubepods": "400000 100000\n",
                                           "/kubepods/pod1": "150000 100000\n", "/kubepods/pod1/c1": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert available_cpus(root, proc) == 1  # floor(1.5): a second thread would be throttled every period


def test_cgroup_v2_without_a_limit(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    _v2(root, proc, "/", {"/": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None
    assert available_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_cgroup_v1_cfs_quota(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    for rel, quota in (("cpu,cpuacct", "-1"), ("cpu,cpuacct/docker", "-1"), ("cpu,cpuacct/docker/abc", "300000")):
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "cpu.cfs_quota_us").write_text(quota + "\n")
        (root / rel / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_unreadable_quota_files_count_as_no_limit(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    _v2(root, proc, "/a", {"/a": "lots 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None
    assert cgroup_cpu_quota(tmp_path / "absent", tmp_path / "absent_proc") is None


@pytest.mark.parametrize(("cpus", "workers", "threads"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 3, 5), (1, 1, 1)])
def test_threads_are_the_cpus_split_among_the_workers(cpus, workers, threads):
    assert intra_op_threads(workers, cpus=cpus) == threads


def test_no_workers_is_an_error():
    with pytest.raises(ValueError, match="at least 1"):
        intra_op_threads(0, cpus=4)
