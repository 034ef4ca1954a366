"""The repository-wide comparison report (report.json, report.md) across models and variants."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from service.manifest import MANIFEST_FILE, ModelManifest

FP32 = "fp32"


def read_manifests(out_dir: Path) -> list[ModelManifest]:
    """Every model.json in the repository, by name."""
    return [ModelManifest.read(p.parent) for p in sorted(out_dir.glob(f"*/{MANIFEST_FILE}"))]


def rows(manifests: Iterable[ModelManifest]) -> list[dict[str, Any]]:
    """One row per model and variant, with ratios to the model's FP32 variant."""
    table = []
    for manifest in manifests:
        base = manifest.variants[FP32]
        for name, variant in manifest.variants.items():
            table.append(
                {
                    "model": manifest.name,
                    "variant": name,
                    "default": name == manifest.default_variant,
                    "accuracy": variant.accuracy,
                    "size_bytes": variant.size_bytes,
                    "size_ratio": round(variant.size_bytes / base.size_bytes, 3),
                    "latency_ms": variant.latency_ms,
                    "speedup": {
                        batch: round(base.latency_ms[batch] / ms, 2)
                        for batch, ms in variant.latency_ms.items()
                    },
                    "qdq_nodes": variant.op_counts.get("QuantizeLinear", 0)
                    + variant.op_counts.get("DequantizeLinear", 0),
                    "gate": "pass" if variant.passed else "failed",
                }
            )
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    """The table people read to pick a precision."""
    lines = [
        "# Model build report",
        "",
        "Latency: median of interleaved runs after warm-up, 1 intra-op thread, one process; "
        "speedup = FP32 latency / variant latency from the same run.",
        "",
        "| model | variant | accuracy | size MB (x FP32) | batch 1 ms (speedup) "
        "| batch 8 ms (speedup) | Q/DQ nodes | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        accuracy = ", ".join(f"{k} {v:.4g}" for k, v in row["accuracy"].items())
        name = f"**{row['variant']}** (default)" if row["default"] else row["variant"]
        lat, speed = row["latency_ms"], row["speedup"]
        lines.append(
            f"| {row['model']} | {name} | {accuracy} "
            f"| {row['size_bytes'] / 1e6:.2f} ({row['size_ratio']:.2f}x) "
            f"| {lat['batch_1']:.3f} ({speed['batch_1']:.2f}x) "
            f"| {lat['batch_8']:.3f} ({speed['batch_8']:.2f}x) "
            f"| {row['qdq_nodes']} | {row['gate']} |"
        )
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, table: list[dict[str, Any]]) -> None:
    (out_dir / "report.json").write_text(json.dumps({"models": table}, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(table))
