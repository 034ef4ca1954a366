"""`python -m build_models`: write the model repository and its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from build_models.pipeline import build_model
from build_models.report import read_manifests, rows, write_report
from build_models.sources import SOURCES


def _log(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_models", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models"), help="repository folder")
    parser.add_argument(
        "--models",
        default=",".join(SOURCES),
        help=f"comma-separated subset of: {', '.join(SOURCES)} (default: all)",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    if not names:
        parser.error("--models names no model")
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")

    args.out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    failed_manifests = []
    for name in names:
        result = build_model(SOURCES[name](), args.out, _log)
        if result.failures:
            failures.extend(result.failures)
            failed_manifests.append(result.manifest)
        else:
            result.manifest.write(args.out / name)

    # Failed variants carry their failing gate checks, so the report marks them itself.
    table = rows([*read_manifests(args.out), *failed_manifests])
    write_report(args.out, table)
    print((args.out / "report.md").read_text(), flush=True)
    if failures:
        print("accuracy gate FAILED (model.json not written for these models):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
