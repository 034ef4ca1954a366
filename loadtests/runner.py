"""`python -m loadtests`: start the service, run Locust per variant and mixed, report.

Each model under test gets headless Locust runs of each variant alone, in interleaved rounds
(fp32 int8, int8 fp32, fp32 int8, ...: whatever else the machine does meanwhile falls on
both), then one with all its variants at once, all with the same users, spawn rate, duration
and request mix. /metrics is scraped before, after and every second during each run, so the
report puts server-side latency, memory and CPU beside Locust's client-side numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests import prom, workload
from loadtests.process import ServiceProcess, start_service, stop_service, wait_for
from loadtests.report import write_reports
from loadtests.summary import RunRecord, build_summary, machine_info

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MIXED = "mixed"


@dataclass
class Options:
    repository: Path
    out: Path
    host: str | None
    duration: int
    rounds: int
    users: int
    spawn_rate: float
    models: list[str]
    variants: list[str]
    warmup: int


@dataclass
class Pinning:
    """Which cores the server and the load generator may use, and what the report says."""

    server: set[int] | None
    locust: set[int] | None
    note: str

    def preexec(self, cpus: set[int] | None) -> Callable[[], None] | None:
        if cpus is None:
            return None
        return lambda: os.sched_setaffinity(0, cpus)


def parse_duration(text: str) -> int:
    """'20', '20s', '2m', '1m30s' -> seconds (at least 1)."""
    text = text.strip().lower()
    if text.isdigit():
        return max(1, int(text))
    seconds, number = 0, ""
    for char in text:
        if char.isdigit():
            number += char
        elif char in "hms" and number:
            seconds += int(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 20s, 2m)")
    if number:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 20s, 2m)")
    return max(1, seconds)


def parse_args(argv: list[str] | None) -> Options:
    env = os.environ.get
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description="Load-test every precision of each model and write a comparison report.",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(env("LOADTEST_REPOSITORY", "models")),
        help="model repository (LOADTEST_REPOSITORY, default ./models)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(env("LOADTEST_OUT", f"loadtests/reports/{stamp}")),
        help="report folder (LOADTEST_OUT, default loadtests/reports/<UTC timestamp>)",
    )
    parser.add_argument(
        "--host",
        default=env("LOADTEST_HOST") or None,
        help="test a running service at this URL instead of starting one (LOADTEST_HOST)",
    )
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=parse_duration(env("LOADTEST_DURATION", "10s")),
        help="run time of each Locust run (LOADTEST_DURATION, default 10s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=int(env("LOADTEST_ROUNDS", "3")),
        help="interleaved rounds of the alone runs (LOADTEST_ROUNDS, default 3)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=int(env("LOADTEST_USERS", "8")),
        help="concurrent Locust users (LOADTEST_USERS, default 8)",
    )
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=float(env("LOADTEST_SPAWN_RATE", "0") or 0),
        help="users started per second (LOADTEST_SPAWN_RATE, default: all in one second)",
    )
    parser.add_argument(
        "--models",
        default=env("LOADTEST_MODELS", ""),
        help="comma-separated models (LOADTEST_MODELS, default all in the repository)",
    )
    parser.add_argument(
        "--variants",
        default=env("LOADTEST_VARIANTS", ""),
        help="comma-separated variants (LOADTEST_VARIANTS, default all of each model)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=int(env("LOADTEST_WARMUP", "10")),
        help="warm-up requests per model x variant x kind, not measured (LOADTEST_WARMUP)",
    )
    args = parser.parse_args(argv)
    if args.users < 1:
        parser.error("--users must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return Options(
        repository=args.repository,
        out=args.out,
        host=args.host.rstrip("/") if args.host else None,
        duration=args.duration,
        rounds=args.rounds,
        users=args.users,
        spawn_rate=args.spawn_rate if args.spawn_rate > 0 else float(args.users),
        models=workload.split_list(args.models),
        variants=workload.split_list(args.variants),
        warmup=max(0, args.warmup),
    )


def plan_pinning(external_server: bool) -> Pinning:
    """Server on the first allowed core, Locust on the second, when there are two."""
    if not hasattr(os, "sched_setaffinity"):
        return Pinning(None, None, "No pinning: this platform has no sched_setaffinity.")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(
            None,
            None,
            f"No pinning possible: only {len(cpus)} core is available (nproc 1), so the "
            "service and Locust shared it and the load generator's work is in every number.",
        )
    server, locust = cpus[0], cpus[1]
    if external_server:
        return Pinning(
            None,
            {locust},
            f"The service was already running (--host): it was not pinned by the runner. "
            f"Locust (one process) and the runner were pinned to core {locust} with "
            "os.sched_setaffinity.",
        )
    unused = len(cpus) - 2
    return Pinning(
        {server},
        {locust},
        f"The service (`python -m service`, one uvicorn worker) was pinned to core {server} "
        f"and Locust (one process, no --processes) with this runner to core {locust}, with "
        "os.sched_setaffinity, so the load generator does not take the server's core."
        + (f" {unused} other core(s) were left idle." if unused else ""),
    )


def round_order(variants: list[str], round_: int) -> list[str]:
    """The variants in order in odd rounds and reversed in even ones (A B, B A, A B, ...).

    A steady drift of the machine over the runs then falls on each side of a pair in turn
    instead of always on the variant that runs second.
    """
    return list(variants) if round_ % 2 else list(reversed(variants))


def start_pinned_service(opts: Options, pinning: Pinning) -> ServiceProcess:
    """`python -m service` on a free loopback port, pinned as planned."""
    return start_service(
        opts.repository,
        opts.out / "server.log",
        log_level="warning",
        preexec=pinning.preexec(pinning.server),
    )


def warm_up(base_url: str, loads: list[workload.Workload], per_kind: int) -> dict[str, Any]:
    """Every sample at least once per variant x kind (and `per_kind` requests), judged."""
    results: dict[str, Any] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for load in loads:
            for variant in load.variants:
                for kind in load.kinds():
                    count = max(per_kind, len(load.samples)) if per_kind else 0
                    failures, wrong, first = 0, 0, None
                    for i in range(count):
                        sample = load.samples[i % len(load.samples)]
                        body = load.body(sample, kind)
                        r = client.post(load.url(variant, kind), content=body.data,
                                        headers=body.headers)  # fmt: skip
                        problem = load.check(kind, sample, r.status_code, r.headers, r.content)
                        if problem is not None:
                            failures += 1
                            wrong += problem.startswith(workload.WRONG_ANSWER)
                            first = first or problem
                    results[f"{load.model}/{variant} {kind}"] = {
                        "requests": count, "failures": failures, "wrong_answers": wrong,
                        "first_failure": first,
                    }  # fmt: skip
    return results


def run_locust(
    opts: Options,
    base_url: str,
    load: workload.Workload,
    variants: list[str],
    round_: int | None,
    pinning: Pinning,
) -> RunRecord:
    """One headless Locust run against one model restricted to `variants`, with scrapes.

    One variant: round `round_` of its alone runs; several: the mixed run.
    """
    label = MIXED if round_ is None else f"{variants[0]}-{round_}"
    run_dir = opts.out / load.model / label
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = run_dir / "requests.json"
    env = {
        **os.environ,
        "LOADTEST_REPOSITORY": str(opts.repository.resolve()),
        "LOADTEST_MODELS": load.model,
        "LOADTEST_VARIANTS": ",".join(variants),
        "LOADTEST_RAW": str(raw.resolve()),
    }
    command = [
        sys.executable, "-m", "locust", "--headless", "-f", str(LOCUSTFILE),
        "--host", base_url, "--users", str(opts.users), "--spawn-rate", f"{opts.spawn_rate:g}",
        "--run-time", f"{opts.duration}s", "--stop-timeout", "2",
        "--csv", str(run_dir / "locust"), "--csv-full-history",
        "--html", str(run_dir / "locust.html"), "--only-summary",
        "--loglevel", "WARNING", "--exit-code-on-error", "0",
    ]  # fmt: skip
    print(f"[loadtests] {load.model} {label}: {opts.users} users for {opts.duration} s", flush=True)
    before = prom.scrape(base_url)
    started = time.time()
    # Children's rusage grows by Locust's CPU when it is reaped (the service is never reaped
    # during a run): a run where Locust used a whole core measured Locust, not the service.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with (
        prom.Poller(base_url) as poller,
        (run_dir / "locust.log").open("wb") as log,
    ):
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=pinning.preexec(pinning.locust),
        )
        try:
            code = process.wait(timeout=opts.duration + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    finished = time.time()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    locust_cpu = (reaped.ru_utime - children.ru_utime) + (reaped.ru_stime - children.ru_stime)
    after = prom.scrape(base_url)
    return RunRecord(
        model=load.model,
        label=label,
        variants=list(variants),
        directory=run_dir,
        started=started,
        finished=finished,
        exit_code=code,
        before=before,
        after=after,
        polls=poller.snapshots,
        locust_cpu_seconds=locust_cpu,
        round=round_,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    loads = workload.load(opts.repository, opts.models or None, opts.variants or None)
    opts.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    pinning = plan_pinning(external_server=opts.host is not None)
    if pinning.locust is not None:
        os.sched_setaffinity(0, pinning.locust)  # the runner scrapes from Locust's core too
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    service = ServiceProcess(opts.host) if opts.host else start_pinned_service(opts, pinning)
    runs: list[RunRecord] = []
    try:
        wait_for(service, timeout=180.0)
        print(f"[loadtests] service ready at {service.url}; warming up", flush=True)
        warm = warm_up(service.url, loads, opts.warmup)
        for load in loads:
            plan: list[tuple[list[str], int | None]] = [
                ([v], n) for n in range(1, opts.rounds + 1) for v in round_order(load.variants, n)
            ]
            if len(load.variants) > 1:
                plan.append((list(load.variants), None))
            for variants, round_ in plan:
                runs.append(run_locust(opts, service.url, load, variants, round_, pinning))
    finally:
        exit_code = stop_service(service)
    summary = build_summary(
        opts=vars(opts) | {"repository": str(opts.repository), "out": str(opts.out)},
        service_url=service.url,
        external=opts.host is not None,
        pinning=pinning.note,
        loads=loads,
        runs=runs,
        warmup=warm,
        load_average=(load_before, os.getloadavg() if load_before is not None else None),
        machine=machine,
        server_exit_code=exit_code,
    )
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_reports(opts.out, summary)
    print(f"[loadtests] report: {opts.out / 'report.md'} and {opts.out / 'report.html'}")
    problems = [r for r in summary["runs"] if r["error"]]
    for run in problems:
        print(f"[loadtests] {run['model']} {run['run']}: {run['error']}", file=sys.stderr)
    return 1 if problems else 0
