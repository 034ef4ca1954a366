"""Memory readings and build info without a server: fake cgroup trees and cpuinfo texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.memory import cgroup_memory, peak_rss_bytes, rss_bytes
from service.metrics import MemoryCollector, build_info, cpu_features

GIB = 1024**3


def write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text + "\n")


def proc_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def exported(collector: MemoryCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_rss_and_peak_are_positive_and_ordered() -> None:
    rss, peak = rss_bytes(), peak_rss_bytes()
    assert rss > 0
    assert peak >= rss * 0.9  # peak is sampled by the kernel; RSS can have grown since by a page


def test_cgroup_v2_container_with_limit_and_peak(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(
        root,
        memory__current=str(300 * 1024**2),
        memory__max=str(512 * 1024**2),
        memory__peak=str(400 * 1024**2),
        memory__stat="anon 1\ninactive_file 104857600\nactive_file 5",
    )
    memory = cgroup_memory(root, proc_cgroup(tmp_path, "0::/\n"))
    assert memory is not None
    assert memory.version == 2
    assert memory.usage_bytes == 300 * 1024**2
    assert memory.limit_bytes == 512 * 1024**2
    assert memory.peak_bytes == 400 * 1024**2
    assert memory.working_set_bytes == 200 * 1024**2


def test_cgroup_v2_max_means_no_limit_and_missing_peak_is_absent(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root, memory__current="1000", memory__max="max")
    memory = cgroup_memory(root, proc_cgroup(tmp_path, "0::/\n"))
    assert memory is not None
    assert (memory.limit_bytes, memory.peak_bytes, memory.working_set_bytes) == (None, None, None)
    names = exported(MemoryCollector(root, proc_cgroup(tmp_path, "0::/\n")))
    assert names["edge_cgroup_memory_usage_bytes"] == 1000
    assert "edge_cgroup_memory_limit_bytes" not in names  # no +Inf, no fake number
    assert "edge_cgroup_memory_peak_bytes" not in names
    assert "edge_cgroup_memory_working_set_bytes" not in names


def test_cgroup_v2_on_a_host_uses_the_process_own_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root, cgroup__controllers="memory")  # the host's root cgroup has no memory.current
    own = root / "system.slice" / "edge-inference.service"
    write(own, memory__current="2000", memory__max="4000")
    memory = cgroup_memory(root, proc_cgroup(tmp_path, "0::/system.slice/edge-inference.service\n"))
    assert memory is not None
    assert (memory.usage_bytes, memory.limit_bytes) == (2000, 4000)


def test_cgroup_v1_unlimited_is_absent(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(
        root / "memory",
        memory__usage_in_bytes=str(GIB),
        memory__limit_in_bytes="9223372036854771712",
        memory__max_usage_in_bytes=str(2 * GIB),
        memory__stat=f"cache 5\ntotal_inactive_file {GIB // 4}",
    )
    text = "12:memory:/docker/abc\n0::/\n"
    memory = cgroup_memory(root, proc_cgroup(tmp_path, text))
    assert memory is not None
    assert memory.version == 1
    assert memory.limit_bytes is None
    assert memory.peak_bytes == 2 * GIB
    assert memory.working_set_bytes == GIB - GIB // 4


def test_cgroup_v1_with_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "memory", memory__usage_in_bytes="100", memory__limit_in_bytes=str(512 * 1024**2))
    memory = cgroup_memory(root, proc_cgroup(tmp_path, "4:memory:/\n"))
    assert memory is not None
    assert (memory.version, memory.limit_bytes) == (1, 512 * 1024**2)


def test_no_cgroup_exports_only_peak_rss(tmp_path: Path) -> None:
    assert cgroup_memory(tmp_path / "none", tmp_path / "missing") is None
    names = exported(MemoryCollector(tmp_path / "none", tmp_path / "missing"))
    assert set(names) == {"edge_process_peak_resident_memory_bytes"}
    assert names["edge_process_peak_resident_memory_bytes"] > 0


X86 = """processor	: 0
flags		: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8 amx_bf16
processor	: 1
flags		: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8 amx_bf16
"""
ARM = """processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimdrdm asimddp sve i8mm bf16
CPU implementer	: 0x41
"""


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (X86, "amx,avx2,avx512_vnni,avx512f"),
        (ARM, "asimd,asimddp,i8mm,sve"),
        ("processor : 0\nflags : fpu sse2\n", ""),
        ("", ""),
    ],
    ids=["x86-sapphire-rapids", "arm64-neoverse-v1", "x86-old", "unknown"],
)
def test_cpu_features(cpuinfo: str, expected: str) -> None:
    assert cpu_features(cpuinfo) == expected


def test_build_info_labels() -> None:
    info = build_info()
    assert set(info) == {"version", "onnxruntime", "python", "machine", "cpu_features"}
    assert all(info[key] for key in ("version", "onnxruntime", "python", "machine"))
    features = info["cpu_features"].split(",") if info["cpu_features"] else []
    assert features == sorted(set(features))
