"""report.md and a self-contained report.html (charts as base64 PNG) from summary.json."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

NOISE = 0.15
"""With one round, differences under this are not called a difference: repeats of one
measurement differed 13-39% on these shared machines (docs: NOTES.md, HTTP serving)."""
SMALLEST = 0.05
"""With rounds, a difference every round agrees on is called once its median is this large."""
MEASURES = (
    ("cpu_seconds_per_request", False, "server CPU per request"),
    ("requests_per_s", True, "throughput"),
    ("server_p50", False, "server p50"),
)
"""What the reading weighs, from the paired rounds: (ratio key, higher is better, name)."""
MODEL_COST = ("run_per_row", False, "ONNX Runtime time per row")
"""The one thing two variants of a model do differently (the service handles their requests
with the same code): a speed difference is called only where this found it too. The measures
above all come from the same server time, so they move together with the machine's drift."""
AGREEING = 2
"""Measures that must find the same difference before the reading calls one: in four A/A runs
(fp32 against a copy of itself), one measure alone went the same way in every round once in
eight comparisons (OCR throughput 0.84-0.92x), two never did."""

MB = 1e6


# --- a tiny document model, rendered to Markdown and to HTML ------------------------------


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    id: str = ""


@dataclass
class Chart:
    name: str
    alt: str
    png: bytes


Block = str | Table | Chart | list[str]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines)


def to_markdown(title: str, intro: str, sections: list[Section]) -> str:
    out = [f"# {title}", "", intro, ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += [_md_table(block), ""]
            elif isinstance(block, Chart):
                out += [f"![{block.alt}](charts/{block.name}.png)", ""]
            elif isinstance(block, list):
                out += [f"- {item}" for item in block] + [""]
            else:
                out += [block, ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    """Escape, then render `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(title: str, intro: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{_inline(intro)}</p>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                ident = f' id="{block.id}"' if block.id else ""
                head = "".join(f"<th>{_inline(h)}</th>" for h in block.headers)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                )
                body.append(
                    f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                )
            elif isinstance(block, Chart):
                data = base64.b64encode(block.png).decode()
                body.append(
                    f'<figure><img alt="{html.escape(block.alt)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{_inline(block.alt)}'
                    "</figcaption></figure>"
                )
            elif isinstance(block, list):
                items = "".join(f"<li>{_inline(item)}</li>" for item in block)
                body.append(f"<ul>{items}</ul>")
            else:
                body.append(f"<p>{_inline(block)}</p>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:24px auto;
padding:0 16px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:12px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}
figure{margin:16px 0}img{max-width:100%}figcaption{color:#555;font-size:13px}
"""


# --- number formats ---------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def mb(value: float | None) -> str:
    return "–" if value is None else f"{value / MB:.1f}"


def _accuracy_text(accuracy: dict[str, float] | None) -> str:
    if not accuracy:
        return "–"
    return ", ".join(f"{k} {v:.4g}" for k, v in accuracy.items())


# --- charts -----------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _color(variant: str, variants: list[str]) -> str:
    """One color per variant in every chart (alone and mixed runs alike)."""
    return f"C{variants.index(variant) % 10}" if variant in variants else "C9"


def _label(row: dict[str, Any]) -> str:
    return row["variant"] if row["run"] == "alone" else f"{row['variant']} (mixed)"


def latency_chart(model: str, rows: list[dict[str, Any]]) -> Chart:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    groups = ["p50", "p95", "p99"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / max(1, len(rows))
    for ax, key, title in (
        (axes[0], "client_ms", "client side (Locust, HTTP round trip)"),
        (axes[1], "server_ms", "server side (edge_request_duration_seconds)"),
    ):
        for i, row in enumerate(rows):
            values = [row[key].get(g) or 0.0 for g in groups]
            positions = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))]
            bars = ax.bar(
                positions,
                values,
                width,
                label=_label(row),
                color=_color(row["variant"], variants),
                edgecolor="white",
                hatch="//" if row["run"] != "alone" else None,
            )
            ax.bar_label(bars, labels=[ms(v) for v in values], fontsize=7, padding=1)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("ms")
        ax.set_title(f"{model}: {title}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return Chart(
        f"latency-{model}",
        f"{model}: latency percentiles per variant, client and server side "
        "(hatched: the mixed run, all variants at once)",
        _png(fig),
    )


def throughput_chart(model: str, runs: list[dict[str, Any]], duration: float) -> Chart:
    fig, ax = plt.subplots(figsize=(12, 3.6))
    variants = list(dict.fromkeys(v for run in runs for v in run["variants"]))
    for run in runs:
        for variant, points in sorted(run["series"]["requests_per_s"].items()):
            # Locust's last history row comes after the stop: its interval is part shutdown.
            kept = [p for p in points if p[0] <= duration + 0.5]
            if not kept:
                continue
            xs, ys = zip(*kept, strict=True)
            mixed = run["kind"] != "alone"
            ax.plot(
                xs,
                ys,
                color=_color(variant, variants),
                linestyle="--" if mixed else "-",
                marker=".",
                label=f"{variant} (mixed run)" if mixed else f"{run['run']} (alone)",
            )
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{model}: throughput over time (Locust stats history)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return Chart(
        f"throughput-{model}",
        f"{model}: requests per second over each run, per variant (dashed: mixed run)",
        _png(fig),
    )


def memory_chart(model: str, rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> Chart:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    alone = [r for r in rows if r["run"] == "alone"]
    stages = ["loaded", "warm"]
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        values = [(r["variant_memory_bytes"].get(stage) or 0.0) / MB for r in alone]
        positions = [x + (i - 0.5) * width for x in range(len(alone))]
        bars = axes[0].bar(positions, values, width, label=f"stage={stage}")
        axes[0].bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=1)
    axes[0].set_xticks(range(len(alone)), [r["variant"] for r in alone])
    axes[0].set_ylabel("MB")
    axes[0].set_title(f"{model}: memory attributed to each variant", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[0].grid(axis="y", alpha=0.3)
    for run in runs:
        points = run["series"]["rss_bytes"]
        if points:
            xs, ys = zip(*points, strict=True)
            axes[1].plot(xs, [y / MB for y in ys], marker=".", label=f"{run['run']} run")
    axes[1].set_xlabel("seconds into the run")
    axes[1].set_ylabel("MB")
    axes[1].set_ylim(bottom=0)
    axes[1].set_title(f"{model}: server process RSS during each run", fontsize=10)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    return Chart(
        f"memory-{model}",
        f"{model}: per-variant memory (edge_variant_memory_bytes) and process RSS over time",
        _png(fig),
    )


# --- the reading ------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _compare(value: float | None, higher_is_better: bool) -> int:
    """+1 better, -1 worse, 0 within noise or unknown."""
    if value is None:
        return 0
    if value >= 1 + NOISE:
        return 1 if higher_is_better else -1
    if value <= 1 - NOISE:
        return -1 if higher_is_better else 1
    return 0


@dataclass
class Finding:
    """One measure's paired ratios (variant / baseline, a round each) and what they say."""

    name: str
    ratios: list[float]
    verdict: int
    """+1 better, -1 worse, 0 no difference the rounds agree on."""

    def __str__(self) -> str:
        middle = median(self.ratios)
        if len(self.ratios) == 1:
            return f"{self.name} {times(middle)}"
        spread = f"{times(min(self.ratios))}-{times(max(self.ratios))}"
        return f"{self.name} {times(middle)} (rounds {spread})"  # median, then the range


def finding(name: str, ratios: list[float | None], higher_is_better: bool) -> Finding:
    """Better or worse only if every round agrees and the median differs by SMALLEST.

    A threshold alone flipped the reading from run to run wherever the true difference sat
    near it; the rounds agreeing is what separates a difference from the machine's drift.
    """
    values = [r for r in ratios if r is not None]
    if len(values) < 2:
        verdict = _compare(values[0], higher_is_better) if values else 0
        return Finding(name, values, verdict)
    middle = median(values)
    higher = all(r > 1 for r in values) and middle >= 1 + SMALLEST
    lower = all(r < 1 for r in values) and middle <= 1 - SMALLEST
    direction = 1 if higher else -1 if lower else 0
    return Finding(name, values, direction if higher_is_better else -direction)


def speed_findings(ratio_row: dict[str, Any]) -> list[Finding]:
    """The MEASURES from the alone runs' paired rounds (or their totals, without rounds)."""
    rounds = ratio_row.get("rounds") or [ratio_row]
    return [
        finding(name, [r.get(key) for r in rounds], higher_is_better)
        for key, higher_is_better, name in MEASURES
        if any(r.get(key) is not None for r in rounds)
    ]


def cost_finding(ratio_row: dict[str, Any]) -> Finding | None:
    """MODEL_COST from the paired rounds, by the measures' rule; None where not measured."""
    rounds = ratio_row.get("rounds") or [ratio_row]
    key, higher_is_better, name = MODEL_COST
    if all(r.get(key) is None for r in rounds):
        return None
    return finding(name, [r.get(key) for r in rounds], higher_is_better)


def speed_verdict(
    variant: str, base: str, findings: list[Finding], cost: Finding | None = None
) -> str:
    """The reading's sentence for a variant that passed its accuracy gate.

    A call needs AGREEING measures and, where measured, the model's own cost (MODEL_COST) to
    find the same difference.
    """
    better = [f for f in findings if f.verdict > 0]
    worse = [f for f in findings if f.verdict < 0]
    count = max((len(f.ratios) for f in findings), default=0)
    agreed = (
        f"in every one of {count} interleaved rounds" if count > 1
        else f"by more than {NOISE:.0%} (one round)"
    )  # fmt: skip
    if better and worse:
        return (
            f"{variant} was better {agreed} on {'; '.join(map(str, better))}, and worse on "
            f"{'; '.join(map(str, worse))}. Which counts depends on the deployment; it passed "
            "the accuracy gate."
        )
    called = 1 if len(better) >= AGREEING else -1 if len(worse) >= AGREEING else 0
    if called and cost is not None and cost.verdict != called:
        found = "; ".join(map(str, better or worse))
        return (
            f"{variant} looked {'faster' if called > 0 else 'slower'} {agreed} ({found}), but "
            f"{cost.name} did not differ that way by the same rule ({cost}). A run of the model "
            "is the only thing the service does differently for two variants: the "
            "difference is not the precision's, so speed does not decide here; "
            f"{variant} passed the accuracy gate, and file size and memory are the differences "
            "that remain."
        )
    agreeing = f"; {cost} agreed" if cost is not None else ""
    if len(better) >= AGREEING:
        return (
            f"{variant} was faster {agreed}: {'; '.join(map(str, better))}{agreeing}. It "
            f"passed the accuracy gate; on these numbers, ship {variant}."
        )
    if len(worse) >= AGREEING:
        return (
            f"{variant} was slower {agreed}: {'; '.join(map(str, worse))}{agreeing}. On these "
            f"numbers, ship {base} unless file size or memory matter more than speed."
        )
    rule = (
        f"fewer than {AGREEING} measures were better or worse in every round by a median of "
        f"{SMALLEST:.0%} or more" if count > 1
        else f"fewer than {AGREEING} measures differed by {NOISE:.0%} or more in this one round"
    )  # fmt: skip
    lone = better or worse
    alone = (
        f"; only {lone[0].name} {'better' if better else 'worse'} {agreed}, and one measure "
        "alone is not called a difference"
        if lone
        else ""
    )
    return (
        f"{rule} ({'; '.join(map(str, findings)) or 'nothing measured'}{alone}), so speed does "
        f"not decide here; {variant} passed the accuracy gate, and file size and memory are "
        "the differences that remain."
    )


def reading(summary: dict[str, Any]) -> list[Block]:
    """Per model and variant: a one-line reading, then the measured facts behind it."""
    blocks: list[Block] = []
    results, ratio_rows, accuracy = summary["results"], summary["ratios"], summary["accuracy"]
    for model in summary["settings"]["models"]:
        variants = summary["settings"]["variants"][model]
        base = "fp32"
        if base not in variants:
            blocks.append(f"{model}: no fp32 variant under test, so no comparison is made.")
            continue
        for variant in (v for v in variants if v != base):
            verdict, facts = _reading_one(model, variant, base, results, ratio_rows, accuracy)
            blocks += [f"{model}, {variant} against {base}: {verdict}", facts]
    return blocks


def _reading_one(
    model: str,
    variant: str,
    base: str,
    results: list[dict[str, Any]],
    ratio_rows: list[dict[str, Any]],
    accuracy: list[dict[str, Any]],
) -> tuple[str, list[str]]:
    a_v = _find(results, model=model, variant=variant, run="alone")
    a_b = _find(results, model=model, variant=base, run="alone")
    m_v = _find(results, model=model, variant=variant, run="mixed")
    m_b = _find(results, model=model, variant=base, run="mixed")
    r_alone = _find(ratio_rows, model=model, variant=variant, run="alone") or {}
    r_mixed = _find(ratio_rows, model=model, variant=variant, run="mixed") or {}
    acc_v = _find(accuracy, model=model, variant=variant) or {}
    acc_b = _find(accuracy, model=model, variant=base) or {}
    facts = []
    if r_alone.get("rounds"):
        per_round = "; ".join(
            f"{name} " + ", ".join(times(r.get(key)) for r in r_alone["rounds"])
            for key, _, name in (*MEASURES, MODEL_COST)
            if any(r.get(key) is not None for r in r_alone["rounds"])
        )
        facts.append(f"Round by round, {variant} / {base} (alone runs, interleaved): {per_round}.")
    if a_v and a_b:
        facts.append(
            f"Throughput, alone (rounds together): {rate(a_v['requests_per_s'])} req/s for "
            f"{variant}, {rate(a_b['requests_per_s'])} for {base} "
            f"({times(r_alone.get('requests_per_s'))})."
        )
        facts.append(
            f"Latency p50, run alone: client {ms(a_v['client_ms']['p50'])} vs "
            f"{ms(a_b['client_ms']['p50'])} ms, server {ms(a_v['server_ms']['p50'])} vs "
            f"{ms(a_b['server_ms']['p50'])} ms ({times(r_alone.get('server_p50'))})."
        )
    if m_v and m_b:
        facts.append(
            f"Served side by side (mixed run): server p50 {ms(m_v['server_ms']['p50'])} vs "
            f"{ms(m_b['server_ms']['p50'])} ms ({times(r_mixed.get('server_p50'))}), p99 "
            f"{ms(m_v['server_ms']['p99'])} vs {ms(m_b['server_ms']['p99'])} ms "
            f"({times(r_mixed.get('server_p99'))})."
        )
    if a_v and a_b:
        compute_v, compute_b = a_v["server_compute_ms"]["p50"], a_b["server_compute_ms"]["p50"]
        server_b = a_b["server_ms"]["p50"]
        if compute_v and compute_b:
            share = (
                f"; {base}'s {ms(compute_b)} ms is {compute_b / server_b:.0%} of its server p50, "
                "the rest is request handling and waiting inside the service"
                if server_b
                else ""
            )
            facts.append(
                f"Inside ONNX Runtime, p50: {ms(compute_v)} vs {ms(compute_b)} ms "
                f"({times(r_alone.get('compute_p50'))}){share}."
            )
        row_v, row_b = a_v.get("run_ms_per_row"), a_b.get("run_ms_per_row")
        if row_v and row_b:
            facts.append(
                f"ONNX Runtime time per row (the runs' own time over the rows they ran): "
                f"{ms(row_v)} vs {ms(row_b)} ms ({times(r_alone.get('run_per_row'))})."
            )
        cpu_v, cpu_b = a_v["cpu_seconds_per_request"], a_b["cpu_seconds_per_request"]
        if cpu_v and cpu_b:
            facts.append(
                f"Server CPU per request: {cpu_v * 1000:.3g} vs {cpu_b * 1000:.3g} ms "
                f"({times(r_alone.get('cpu_seconds_per_request'))})."
            )
        wrong_v = a_v["wrong_answers"] + (m_v["wrong_answers"] if m_v else 0)
        wrong_b = a_b["wrong_answers"] + (m_b["wrong_answers"] if m_b else 0)
        fail_v = a_v["failures"] + (m_v["failures"] if m_v else 0)
        fail_b = a_b["failures"] + (m_b["failures"] if m_b else 0)
        total_v = a_v["requests"] + (m_v["requests"] if m_v else 0)
        total_b = a_b["requests"] + (m_b["requests"] if m_b else 0)
        facts.append(
            f"Under load: {fail_v} of {total_v} requests failed ({wrong_v} wrong answers) for "
            f"{variant}, {fail_b} of {total_b} ({wrong_b}) for {base}."
        )
        mem_v = a_v["variant_memory_bytes"].get("warm")
        mem_b = a_b["variant_memory_bytes"].get("warm")
        if mem_v is not None and mem_b is not None:
            facts.append(f"Memory attributed to the variant (warm): {mb(mem_v)} vs {mb(mem_b)} MB.")
    if acc_v and acc_b:
        facts.append(
            f"Accuracy from the build: {_accuracy_text(acc_v.get('accuracy'))} for {variant}; "
            f"{_accuracy_text(acc_b.get('accuracy'))} for {base}; accuracy gate: "
            f"{acc_v.get('gate')}. File size {mb(acc_v.get('size_bytes'))} vs "
            f"{mb(acc_b.get('size_bytes'))} MB."
        )
    if acc_v.get("gate") != "pass":
        verdict = (
            f"{variant} did not pass the build's accuracy gate, so its speed does not make it "
            f"shippable; {base} is the one to ship until the quantization is fixed."
        )
    else:
        verdict = speed_verdict(variant, base, speed_findings(r_alone), cost_finding(r_alone))
    return verdict, facts


# --- assembling -------------------------------------------------------------------------


def headline(results: list[dict[str, Any]]) -> Table:
    rows = []
    for r in results:
        cpu = r["cpu_seconds_per_request"]
        rows.append(
            [
                r["model"],
                r["variant"],
                r["run"],
                str(r["requests"]),
                f"{r['failures']} ({r['wrong_answers']})",
                rate(r["requests_per_s"]),
                " / ".join(ms(r["client_ms"][p]) for p in ("p50", "p95", "p99")),
                " / ".join(ms(r["server_ms"][p]) for p in ("p50", "p95", "p99")),
                ms(r["server_compute_ms"]["p50"]),
                "–" if cpu is None else f"{cpu * 1000:.3g}",
                mb(r["variant_memory_bytes"].get("warm")),
                mb(r["rss_bytes_max"]),
            ]
        )
    return Table(
        ["model", "variant", "run", "requests", "failures (wrong answers)", "req/s",
         "client p50 / p95 / p99 ms", "server p50 / p95 / p99 ms", "ORT compute p50 ms",
         "server CPU ms / request", "variant memory MB (warm)", "server RSS max MB"],
        rows,
        id="headline",
    )  # fmt: skip


def ratio_table(ratio_rows: list[dict[str, Any]]) -> Table:
    keys = ["requests_per_s", "client_p50", "client_p99", "server_p50", "server_p99",
            "compute_p50", "run_per_row", "cpu_seconds_per_request",
            "variant_memory_warm"]  # fmt: skip
    return Table(
        ["model", "variant / baseline", "run", "req/s", "client p50", "client p99",
         "server p50", "server p99", "ORT compute p50", "ORT per row", "CPU / request",
         "variant memory"],
        [[r["model"], f"{r['variant']} / {r['baseline']}", run,
          *(times(row.get(k)) for k in keys)]
         for r in ratio_rows
         for run, row in [(r["run"], r)] + [(f"alone, round {n}", each) for n, each in
                                            enumerate(r.get("rounds") or [], start=1)]],
        id="ratios",
    )  # fmt: skip


def accuracy_table(rows: list[dict[str, Any]]) -> Table:
    out = []
    for r in rows:
        latency = r.get("latency_ms") or {}
        out.append(
            [r["model"], r["variant"] + (" (default)" if r.get("default") else ""),
             _accuracy_text(r.get("accuracy")), mb(r.get("size_bytes")),
             ms(latency.get("batch_1")), ms(latency.get("batch_8")), str(r.get("gate"))]
        )  # fmt: skip
    return Table(
        ["model", "variant", "accuracy (build, held-out data)", "size MB",
         "build batch-1 ms", "build batch-8 ms", "accuracy gate"],
        out,
        id="accuracy",
    )  # fmt: skip


def kinds_table(results: list[dict[str, Any]]) -> Table:
    rows = []
    for r in results:
        for kind, k in r["by_kind"].items():
            rows.append(
                [r["model"], r["variant"], r["run"], kind, str(k["requests"]),
                 f"{k['failures']} ({k['wrong_answers']})", rate(k["requests_per_s"]),
                 " / ".join(ms(k["client_ms"][p]) for p in ("p50", "p95", "p99"))]
            )  # fmt: skip
    return Table(
        ["model", "variant", "run", "request kind", "requests", "failures (wrong)", "req/s",
         "client p50 / p95 / p99 ms"],
        rows,
        id="kinds",
    )  # fmt: skip


def _method(summary: dict[str, Any]) -> list[str]:
    s, m = summary["settings"], summary["machine"]
    load_b, load_a = m.get("load_average_before"), m.get("load_average_after")
    weights = ", ".join(f"{k} {v}" for k, v in s["weights"].items())
    items = [
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['cpus_allowed']} allowed), "
        f"{mb(m['memory_bytes'])} MB memory; {m['platform']}; Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, Locust {m['locust']}, uvicorn {m['uvicorn']}.",
        "Load average (1/5/15 min) before "
        + (" / ".join(f"{x:.2f}" for x in load_b) if load_b else "unknown")
        + ", after "
        + (" / ".join(f"{x:.2f}" for x in load_a) if load_a else "unknown")
        + f" on {m['cpu_count']} cores: anything else running shows up in every number.",
        f"Pinning: {summary['pinning']}",
        f"Service: {summary['service']['url']}"
        + (" (already running)" if summary["service"]["external"] else " started by the runner")
        + f", repository `{s['repository']}`.",
        f"Each model got {s.get('rounds', 1)} round(s) of Locust runs of each variant alone, "
        "interleaved (fp32 int8, int8 fp32, ...: a drift falls on both), then one mixed run "
        "(all its variants at once, chosen at random per request), each "
        f"{s['duration_s']} s with {s['users']} users "
        f"started at {s['spawn_rate']:g}/s, headless, one process. Users have no think time "
        "(closed loop): each sends its next request when the answer arrives, so req/s is what "
        "the server and the generator sustain together (Locust's own CPU is reported per run) "
        "and latency includes queueing. The alone rows put a variant's rounds together.",
        f"Request mix (weights): {weights}; `task` is the model's task endpoint. Bodies are "
        "the model's shipped samples ("
        + ", ".join(f"{k}: {v}" for k, v in s["samples"].items())
        + "), chosen at random. A response is checked for status and shape; for "
        "classifiers the top label must equal the sample's label, or the request counts "
        "as a failure (a wrong answer).",
        f"Warm-up before measuring: every sample at least once and {s['warmup_requests_per_kind']}"
        " requests per variant and request kind.",
        "Client latency: every request's time as Locust measured it (send to last byte), exact "
        "percentiles over all requests; Locust's own CSV and HTML round to whole ms.",
        "Server latency: `edge_request_duration_seconds` (decode to encode, inside the service) "
        "and `edge_inference_compute_duration_seconds` (inside ONNX Runtime), percentiles "
        "interpolated in the histogram buckets of /metrics before vs after each run, like "
        "PromQL histogram_quantile: only as fine as the buckets.",
        "CPU per request: process_cpu_seconds_total growth over the run divided by the requests "
        "the service counted (alone runs only: one process serves all variants, so a mixed "
        "run's CPU cannot be split). Variant memory: `edge_variant_memory_bytes` (RSS growth "
        "while the variant loaded / after warm-up). RSS: `process_resident_memory_bytes`, "
        "scraped every second.",
        "Ratios are variant / fp32 from the same kind of run. The reading above weighs the "
        "alone runs round by round (each variant's round against the baseline's round next to "
        "it): a measure counts as better or worse only when every round agrees and the median "
        f"differs by {SMALLEST:.0%} or more (with one round: by {NOISE:.0%}; repeats of one "
        "measurement differed 13-39% on these shared machines), and a difference is called "
        f"only when {AGREEING} measures find it and ONNX Runtime's time per row "
        "(`edge_inference_run_seconds_total` over `edge_inference_batch_size_sum`) finds it by "
        "the same rule: the service handles both variants' requests with the same code, so a "
        "difference their runs do not show is the machine's drift. The mixed run, where both are "
        "served at the same moments, shows server-side latency when the variants share the "
        "core.",
    ]
    return items


def _status(run: dict[str, Any]) -> str:
    """The run's error, or "ok"; a run where Locust was CPU-bound says so."""
    status = run["error"] or "ok"
    if cpu_bound(run):
        status += f" (Locust CPU-bound: {run['locust']['cpu_share']:.0%} of a core)"
    return status


def cpu_bound(run: dict[str, Any]) -> bool:
    return bool(run.get("locust", {}).get("cpu_bound"))


def locust_warnings(summary: dict[str, Any]) -> list[str]:
    """One line per run in which Locust used >= 90% of its core: it measured the generator."""
    return [
        f"**Locust was CPU-bound** in {run['model']} / {run['run']} "
        f"({run['locust']['cpu_share']:.0%} of one core): that run measured the load "
        "generator, not the service; its req/s and latency are a floor on what the service "
        "does. Rerun with fewer users, or Locust on a faster core or distributed."
        for run in summary["runs"]
        if cpu_bound(run)
    ]


def _files(summary: dict[str, Any]) -> Table:
    rows = []
    for run in summary["runs"]:
        files = run["files"]
        rows.append(
            [run["model"], run["run"], files.get("locust_html", "–"),
             files.get("stats_csv", "–"), files.get("history_csv", "–"),
             files.get("failures_csv", "–"), _status(run)]
        )  # fmt: skip
    return Table(
        ["model", "run", "Locust HTML", "stats CSV", "stats history CSV", "failures CSV",
         "status"],
        rows,
        id="files",
    )  # fmt: skip


def build_sections(summary: dict[str, Any], charts: bool = True) -> list[Section]:
    results = summary["results"]
    sections = [
        Section("Which to ship", [*locust_warnings(summary), *reading(summary)]),
        Section(
            "Results",
            [
                "One row per model, variant and run (alone: only this variant was sent; "
                "mixed: all the model's variants at once). Failures in brackets: wrong "
                "answers. Latency in milliseconds.",
                headline(results),
            ],
        ),
        Section(
            "Ratios to FP32",
            [
                "Variant / fp32; the alone rows also round by round (each against the fp32 round "
                "next to it). Above 1 is better for req/s; below 1 is better for latency, "
                "CPU and memory.",
                ratio_table(summary["ratios"]),
            ],
        ),
        Section(
            "Accuracy from the build (same variants)",
            [
                "From the repository's report.json: measured by `python -m build_models` on "
                "held-out data, with its accuracy gate against FP32. Speed above, accuracy "
                "here: judge them together.",
                accuracy_table(summary["accuracy"]),
            ],
        ),
    ]
    if charts:
        chart_blocks: list[Block] = []
        for model in summary["settings"]["models"]:
            rows = [r for r in results if r["model"] == model]
            runs = [r for r in summary["runs"] if r["model"] == model]
            if not rows:
                continue
            chart_blocks += [
                latency_chart(model, rows),
                throughput_chart(model, runs, summary["settings"]["duration_s"]),
                memory_chart(model, rows, runs),
            ]
        sections.append(Section("Charts", chart_blocks))
    sections += [
        Section("By request kind (client side)", [kinds_table(results)]),
        Section("How this was measured", [_method(summary)]),
        Section("Files", ["Locust's own reports, beside this one:", _files(summary)]),
    ]
    return sections


def write_reports(out: Path, summary: dict[str, Any]) -> None:
    """report.md, report.html and charts/*.png in `out`."""
    sections = build_sections(summary)
    title = "Load test: precisions compared"
    intro = (
        f"Generated {summary['generated_at']} by `{summary['tool']}` for "
        f"{', '.join(summary['settings']['models'])}. Numbers are from this machine and "
        "this run only."
    )
    charts_dir = out / "charts"
    charts_dir.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Chart):
                (charts_dir / f"{block.name}.png").write_bytes(block.png)
    (out / "report.md").write_text(to_markdown(title, intro, sections))
    (out / "report.html").write_text(to_html(title, intro, sections))
