"""Benchmark: `broker validate` on the hostile corpus of floods; prints the time and peak memory of each.

    python tests/perf/bench_floods.py [--tiny] [--repeat R]

The corpus is tests/description/floods.py (issue 12, section 3): 100,000 attributes on one element, one
unknown attribute on each of 100,000 nodes, a million attributes at 255 per element, 100,000 invalid values
side by side, one node with 200,000 children, one parameter with 200,000 values (valid), a 20 MB text,
100,000-deep nesting. Each document is written to a file and checked by a fresh ``broker validate`` process;
its wall time and its peak resident set (from wait4) are printed against the targets: answered (refused by a
limit, or validated) in under 5 s and 500 MB. The baseline is ``broker validate`` of a one-node workflow
(process start-up and imports). Every time is the best of R runs.

Exit status: 0 when every document got the expected answer, whatever the timings (a MISS is a figure, not a
failure); 1 when an answer is wrong. tests/run runs this with --tiny (a hundredth of every size, and of the
text and total-attribute limits).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests` importable from the checkout
    sys.path.insert(0, str(REPO))

from tests.description.floods import CORPUS, NS, P  # noqa: E402

BROKER = Path(sys.executable).parent / "broker"
TIME_TARGET_S = 5.0
MEMORY_TARGET_MB = 500.0
TINY_SCALE = 0.01


def validate(path: Path, scale: float) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB, exit status, output) of one ``broker validate`` process; the size limits
    scaled like the documents, so that a small document meets the limit its full-size one meets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")}
    if scale < 1.0:
        env["BROKER_LIMITS_MAX_TEXT_BYTES"] = str(int(1024**2 * scale))
        env["BROKER_LIMITS_MAX_ATTRIBUTES"] = str(int(1_000_000 * scale))
    started = time.perf_counter()
    proc = subprocess.Popen([str(BROKER), "validate", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)
    output = proc.stdout.read() if proc.stdout is not None else b""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss / 1024, proc.returncode, output.decode("utf-8", "replace")


def best(path: Path, repeat: int, scale: float) -> tuple[float, float, int, str]:
    runs = [validate(path, scale) for _ in range(repeat)]
    return min(runs, key=lambda run: run[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a hundredth of every size, one run: CI's smoke test")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each document, best kept (3)")
    args = parser.parse_args(argv)
    scale, repeat = (TINY_SCALE, 1) if args.tiny else (1.0, args.repeat)
    wrong = 0
    print(f"flood benchmark, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, nproc "
          f"{len(os.sched_getaffinity(0))}, scale {scale:g}, best of {repeat}")
    with tempfile.TemporaryDirectory(prefix="bench-floods-") as tmp:
        baseline = Path(tmp) / "one-node.xml"
        baseline.write_text(f'<workflow xmlns="{NS}" name="b"><node id="a">{P}</node></workflow>')
        base_s, base_mb, _, _ = best(baseline, repeat, scale)
        rows = [("document", "size", "answer", "time", "peak RSS", "target", "result")]
        for flood in CORPUS:
            path = Path(tmp) / f"{flood.make.__name__}.xml"
            data = flood.make(scale)
            path.write_bytes(data)
            del data
            seconds, peak, status, output = best(path, repeat, scale)
            answer = "valid" if status == 0 else "refused" if status == 1 else f"exit {status}"
            if (status != (0 if flood.expected is None else 1)
                    or (flood.expected is not None and scale == 1.0 and flood.expected not in output)):
                wrong += 1
                answer = f"WRONG ({answer}: {output[:200]!r})"
            met = seconds < TIME_TARGET_S and peak < MEMORY_TARGET_MB
            rows.append((flood.name, f"{path.stat().st_size / 1e6:.1f} MB", answer, f"{seconds:.2f} s",
                         f"{peak:.0f} MB", f"< {TIME_TARGET_S:g} s, < {MEMORY_TARGET_MB:g} MB",
                         "PASS" if met else "MISS"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\nbaseline: broker validate of a one-node workflow {base_s:.2f} s, {base_mb:.0f} MB")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
