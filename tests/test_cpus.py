"""CPUs a process may use: affinity, capped by a cgroup v2 or v1 CPU quota."""

from __future__ import annotations

import os
import pathlib

import pytest

from gateway.cpus import cpu_quota, usable_cpus

V2_SELF = "0::/kubepods/pod1/app\n"
V1_SELF = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"


def fake_cgroup(root: pathlib.Path, self_cgroup: str, files: dict[str, str]) -> str:
    """Writes /proc/self/cgroup and cgroup files under root; the former's path."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = root / "proc-self-cgroup"
    proc.write_text(self_cgroup)
    return str(proc)


@pytest.fixture(autouse=True)
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))


@pytest.mark.parametrize(
    ("self_cgroup", "files", "cpus"),
    [
        # cgroup v2, the process's own cgroup
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "200000 100000\n"}, 2),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "max 100000\n"}, 8),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "150000 100000\n"}, 2),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "10000 100000\n"}, 1),
        # a limit on an ancestor binds too; the smallest wins
        (
            V2_SELF,
            {
                "kubepods/pod1/app/cpu.max": "max 100000\n",
                "kubepods/pod1/cpu.max": "300000 100000\n",
            },
            3,
        ),
        (
            V2_SELF,
            {
                "kubepods/pod1/app/cpu.max": "200000 100000\n",
                "kubepods/pod1/cpu.max": "400000 100000\n",
            },
            2,
        ),
        # in a cgroup namespace the path is "/" and the mount is the cgroup itself
        ("0::/\n", {"cpu.max": "200000 100000\n"}, 2),
        # the path does not exist under the mount: the mount's own cpu.max
        (V2_SELF, {"cpu.max": "200000 100000\n"}, 2),
        # a cgroup outside the namespace ("/../x") is not looked for above the mount
        ("0::/../outside\n", {"cpu.max": "200000 100000\n"}, 2),
        # cgroup v1
        (
            V1_SELF,
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            3,
        ),
        (
            V1_SELF,
            {
                "cpu/cpu.cfs_quota_us": "50000\n",
                "cpu/cpu.cfs_period_us": "100000\n",
            },
            1,
        ),
        (
            V1_SELF,
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            8,
        ),
        # affinity caps a larger quota
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "1600000 100000\n"}, 8),
    ],
)
def test_a_quota_caps_the_cpus(
    tmp_path: pathlib.Path, self_cgroup: str, files: dict[str, str], cpus: int
) -> None:
    proc = fake_cgroup(tmp_path, self_cgroup, files)

    assert usable_cpus(str(tmp_path), proc) == cpus


@pytest.mark.parametrize(
    ("self_cgroup", "files"),
    [
        (V2_SELF, {}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": ""}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "lots 100000\n"}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "200000\n"}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "200000 0\n"}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "0 100000\n"}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "2.5 1\n"}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "200000 100000 7\n"}),
        (V2_SELF, {"kubepods/pod1/app/cpu.max": "\u00b2 100000\n"}),
        (V1_SELF, {"cpu/cpu.cfs_quota_us": "200000\n"}),  # no period
        (V1_SELF, {"cpu/cpu.cfs_quota_us": "x", "cpu/cpu.cfs_period_us": "1"}),
        ("garbage\n", {}),
        ("", {}),
    ],
)
def test_a_missing_or_garbled_quota_is_no_quota(
    tmp_path: pathlib.Path, self_cgroup: str, files: dict[str, str]
) -> None:
    proc = fake_cgroup(tmp_path, self_cgroup, files)

    assert cpu_quota(str(tmp_path), proc) is None
    assert usable_cpus(str(tmp_path), proc) == 8


@pytest.mark.parametrize("self_cgroup", [None, "", "garbage\n"])
def test_an_unreadable_proc_self_cgroup_reads_the_mounts_cpu_max(
    tmp_path: pathlib.Path, self_cgroup: str | None
) -> None:
    proc = fake_cgroup(tmp_path, self_cgroup or "", {"cpu.max": "200000 100000\n"})
    if self_cgroup is None:
        os.unlink(proc)

    assert usable_cpus(str(tmp_path), proc) == 2


def test_no_cgroup_files_at_all_is_the_affinity(tmp_path: pathlib.Path) -> None:
    absent = tmp_path / "absent"

    assert cpu_quota(str(absent), str(absent / "cgroup")) is None
    assert usable_cpus(str(absent), str(absent / "cgroup")) == 8


def test_the_quota_is_a_fraction_of_cpus(tmp_path: pathlib.Path) -> None:
    proc = fake_cgroup(
        tmp_path, V2_SELF, {"kubepods/pod1/app/cpu.max": "150000 100000\n"}
    )

    assert cpu_quota(str(tmp_path), proc) == 1.5


def test_at_least_one_cpu(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())

    assert usable_cpus(str(tmp_path / "absent"), str(tmp_path / "absent")) == 1


def test_affinity_caps_the_quota(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    proc = fake_cgroup(
        tmp_path, V2_SELF, {"kubepods/pod1/app/cpu.max": "400000 100000\n"}
    )

    assert usable_cpus(str(tmp_path), proc) == 1


def test_this_machine_has_at_least_one() -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
