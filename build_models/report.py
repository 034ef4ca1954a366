"""The repository-wide comparison report (report.json, report.md) across models and variants."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.manifest import MANIFEST_FILE, ModelManifest

if TYPE_CHECKING:
    from build_models.pipeline import BuildResult

FP32 = "fp32"


def read_manifests(out_dir: Path) -> list[ModelManifest]:
    """Every readable model.json in the repository, by name (older schemas are left out)."""
    manifests = []
    for path in sorted(out_dir.glob(f"*/{MANIFEST_FILE}")):
        try:
            manifests.append(ModelManifest.read(path.parent))
        except ValueError:  # another schema version: the service skips it too
            continue
    return manifests


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
                        if batch in base.latency_ms
                    },
                    "qdq_nodes": variant.op_counts.get("QuantizeLinear", 0)
                    + variant.op_counts.get("DequantizeLinear", 0),
                    "gate": "pass" if variant.passed else "failed",
                }
            )
    return table


def markdown(report: dict[str, Any]) -> str:
    """The tables people read to pick a precision, then every candidate the search tried."""
    lines = [
        "# Model build report",
        "",
        "Latency: median of interleaved runs after warm-up, 1 intra-op thread, one process; "
        "speedup = FP32 latency / variant latency from the same run.",
        "",
    ]
    if report["failed"]:
        lines += ["**Build failed** (the repository keeps the previous build of these):", ""]
        lines += [f"- {failure}" for failure in report["failed"]] + [""]
    lines += [
        "| model | variant | accuracy | size MB (x FP32) | batch 1 ms (speedup) "
        "| batch 8 ms (speedup) | Q/DQ nodes | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["models"]:
        accuracy = ", ".join(f"{k} {v:.4g}" for k, v in row["accuracy"].items())
        name = f"**{row['variant']}** (default)" if row["default"] else row["variant"]
        lines.append(
            f"| {row['model']} | {name} | {accuracy} "
            f"| {row['size_bytes'] / 1e6:.2f} ({row['size_ratio']:.2f}x) "
            f"| {_latency(row, 'batch_1')} | {_latency(row, 'batch_8')} "
            f"| {row['qdq_nodes']} | {row['gate']} |"
        )
    for model, reason in report["defaults"].items():
        lines += ["", f"- {model}: {reason}"]
    for model, candidates in report["candidates"].items():
        if not candidates:
            continue
        lines += [
            "",
            f"## {model}: candidates tried",
            "",
            "| candidate | variant | accuracy | gate | batch 1 ms (fp32 ms, speedup) "
            "| batch 8 ms (fp32 ms, speedup) | size MB | nodes kept FP32 | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in candidates:
            accuracy = ", ".join(f"{k} {v:.4g}" for k, v in c["accuracy"].items())
            chosen = f"**{c['name']}** (kept)" if c["chosen"] else c["name"]
            lines.append(
                f"| {chosen} | {c['variant']} | {accuracy} | {c['gate']} "
                f"| {_versus(c, 'batch_1')} | {_versus(c, 'batch_8')} "
                f"| {c['size_bytes'] / 1e6:.2f} | {c['nodes_fp32']} | {c['note']} |"
            )
    return "\n".join(lines) + "\n"


def _versus(candidate: dict[str, Any], batch: str) -> str:
    """A candidate's latency beside FP32's from the same interleaved run."""
    if batch not in candidate["latency_ms"]:
        return "n/a (static batch)"
    mine, fp32 = candidate["latency_ms"][batch], candidate["fp32_latency_ms"][batch]
    return f"{mine:.3f} ({fp32:.3f}, {fp32 / mine:.2f}x)"


def _latency(row: dict[str, Any], batch: str) -> str:
    if batch not in row["latency_ms"]:
        return "n/a (static batch)"
    return f"{row['latency_ms'][batch]:.3f} ({row['speedup'][batch]:.2f}x)"


def build_report(out_dir: Path, results: dict[str, BuildResult]) -> dict[str, Any]:
    """The repository's models as built now, with this run's failures and candidates."""
    manifests = {m.name: m for m in read_manifests(out_dir)}
    for name, result in results.items():
        if result.failures and result.manifest is not None:
            manifests[name] = result.manifest  # shown, marked failed, but not in the repository
    ordered = [manifests[name] for name in sorted(manifests)]
    return {
        "ok": not any(result.failures for result in results.values()),
        "failed": [f for result in results.values() for f in result.failures],
        "models": rows(ordered),
        "defaults": {m.name: m.default_reason for m in ordered if m.default_reason},
        "candidates": {m.name: m.build.get("candidates", []) for m in ordered},
    }


def write_report(out_dir: Path, results: dict[str, BuildResult]) -> None:
    report = build_report(out_dir, results)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report))
