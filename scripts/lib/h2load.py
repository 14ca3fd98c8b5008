"""h2load's report and per-request log, read one way for every bench script.

Imported by the summaries of scripts/bench-*.sh (`sys.path` gets
scripts/lib) and run by scripts/lib/bench.sh to check a run:

    python3 scripts/lib/h2load.py check REPORT MIN-BYTES

exits 1, naming what went wrong, unless every request h2load counted was
started, done and succeeded (2xx/3xx), none failed, errored or timed out,
and the responses carried at least MIN-BYTES of body each on average. h2load
itself exits 0 when every request fails, and a gRPC error is an HTTP 200
with an empty body, so both checks are needed.

Percentiles are nearest-rank: the p-th percentile of n sorted samples is the
sample at rank ceil(p / 100 * n) (1-based), so p50 and p99 are always
latencies some request actually had.
"""

import math
import re
import sys

_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
_FINISHED = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
_DATA = re.compile(r"traffic: .*\((\d+)\) data")


def report(path):
    """The figures of the h2load report at `path` (a dict)."""
    text = open(path).read()
    requests = _REQUESTS.search(text)
    finished = _FINISHED.search(text)
    data = _DATA.search(text)
    if not (requests and finished and data):
        raise SystemExit(f"{path}: not an h2load report:\n{text}")
    total, started, done, ok, failed, errored, timeout = map(int, requests.groups())
    return dict(text=text, rps=float(finished.group(1)), total=total, started=started, done=done,
                ok=ok, failed=failed, errored=errored, timeout=timeout, data=int(data.group(1)))


def problem(path, min_bytes):
    """Why the run at `path` does not count (None when it does)."""
    r = report(path)
    # A timed run (-D) stops with requests in flight: they count as started,
    # not in the total, and are no failure.
    if r["total"] == 0 or not r["total"] == r["done"] == r["ok"] or r["started"] < r["total"]:
        return (f"{r['total']} total, {r['started']} started, {r['done']} done, "
                f"{r['ok']} succeeded: every request must succeed")
    if r["failed"] or r["errored"] or r["timeout"]:
        return f"{r['failed']} failed, {r['errored']} errored, {r['timeout']} timed out"
    if r["data"] < min_bytes * r["ok"]:
        return (f"{r['data']} response bytes for {r['ok']} requests, expected at least "
                f"{min_bytes} each (errors in disguise?)")
    return None


def latencies(path):
    """Per-request latencies in µs from an h2load --log-file (start, status, latency)."""
    with open(path) as log:
        return [int(line.split("\t")[2]) for line in log if line.strip()]


def pct(samples, p):
    """The nearest-rank p-th percentile of `samples` (any order, not empty)."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def median(values):
    """The median (mean of the middle two for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "check":
        raise SystemExit("usage: h2load.py check REPORT MIN-BYTES")
    why = problem(sys.argv[2], int(sys.argv[3]))
    if why:
        raise SystemExit(f"{sys.argv[2]}: {why}")
