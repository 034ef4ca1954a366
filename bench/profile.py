"""Summarise a py-spy raw (collapsed-stack) profile: the functions that own the samples.

`py-spy record --format raw -o prof.txt -p PID` under load, then `python -m bench.profile
prof.txt`: self and inclusive shares per function, the numbers the issue note quotes.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_NOT_FRAMES = ("process ", "thread ")
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `module.py:func`, short enough for a table."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"]
    parts = file.split("/")
    short = "/".join(parts[-2:]) if "site-packages" in file or "python3" in file else parts[-1]
    return f"{short}:{match['func']}"


def summarise(raw: str, top: int = 15) -> tuple[int, list[tuple[str, float, float]]]:
    """(total samples, [(function, self %, inclusive %)]) sorted by inclusive share."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith(_NOT_FRAMES)]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    rows = [
        (name, 100.0 * own[name] / total, 100.0 * inclusive[name] / total)
        for name, _ in inclusive.most_common()
    ]
    by_self = sorted(rows, key=lambda row: -row[1])[:top]
    return total, by_self


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__)
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    total, rows = summarise(args.profile.read_text(), args.top)
    print(f"{total} samples; top by self time")
    print("| function | self % | inclusive % |\n|---|---|---|")
    for name, own, inclusive in rows:
        print(f"| `{name}` | {own:.1f} | {inclusive:.1f} |")


if __name__ == "__main__":
    main()
