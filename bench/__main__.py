"""`python -m bench` (`make bench`): write bench/results/<timestamp>.{json,md}.

BENCH_QUICK=1 (or --quick): the default variant of each model, c=1 and 16, 2 rounds.
BENCH_VARIANTS=digits/int8,ocr/int8 picks variants; BENCH_ROUNDS and BENCH_SECONDS override.
Where MLServer is installed (`make mlserver`, or BENCH_MLSERVER=path/to/mlserver), every cell
gets an MLServer column too; BENCH_MLSERVER=off leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.mlserver import mlserver_path
from bench.report import markdown
from bench.run import Plan, plan_cores, run
from service.manifest import MANIFEST_FILE, ModelManifest

QUICK_VARIANTS = ("digits/int8", "minilm/int8-dynamic", "ocr/int8")


def all_variants(repository: Path) -> list[str]:
    """Every model/variant in the repository, FP32 first so INT8 ratios read naturally."""
    names = []
    for path in sorted(repository.glob(f"*/{MANIFEST_FILE}")):
        manifest = ModelManifest.read(path.parent)
        names += [f"{manifest.name}/{v}" for v in sorted(manifest.variants)]
    return names


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    available = all_variants(args.repository)
    if not available:
        raise SystemExit(f"no models in {args.repository}: run `make models` first")
    chosen = os.environ.get("BENCH_VARIANTS") or args.variants
    if chosen:
        variants = [v.strip() for v in chosen.split(",") if v.strip()]
        unknown = sorted(set(variants) - set(available))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; available: {', '.join(available)}")
    elif quick:
        variants = [v for v in QUICK_VARIANTS if v in available]
    else:
        variants = available
    server_core, load_core = plan_cores()
    return Plan(
        repository=args.repository,
        variants=variants,
        concurrency=[1, 16] if quick else [1, 4, 16, 64],
        rounds=int(os.environ.get("BENCH_ROUNDS", 2 if quick else 5)),
        seconds=int(os.environ.get("BENCH_SECONDS", 2)),
        overload_seconds=float(os.environ.get("BENCH_SECONDS", 3 if quick else 10)),
        quick=quick,
        server_core=server_core,
        load_core=load_core,
        mlserver=mlserver_path(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", help="comma-separated model/variant list")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    print(
        f"bench: {', '.join(plan.variants)}; c={plan.concurrency}; {plan.rounds} rounds x "
        f"{plan.seconds:g} s; server core {plan.server_core}, load core {plan.load_core}; "
        f"MLServer {plan.mlserver or 'not installed: no column'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        results = run(plan, Path(workdir), say=lambda text: print(text, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / time.strftime("%Y%m%d-%H%M%S")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results)
    stem.with_suffix(".md").write_text(report)
    print(report)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
