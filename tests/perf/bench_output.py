"""Benchmark: reading a payload's output for its ``@broker`` reports (broker.elf.elf.scan).

    python tests/perf/bench_output.py [--tiny] [--repeat R]

The broker scans a local attempt's output while it runs and at its end, and the resident agent and the elf
scan it whole at each end: a payload that prints fast must not make that costly for anyone. Three outputs of
the same size are written to a temporary directory: short ordinary lines (``yes``: two bytes each), ordinary
lines of 80 bytes, and report lines (a progress and an output, alternating). Each is scanned whole, and
against it the baseline reads the same file in the same 64 KiB chunks and does nothing else (the floor of any
scan). Also printed, for the short lines: the line-by-line loop the scan replaced (2026-12-07), on a tenth of
the file. Every time is the best of R runs; the reports found are checked.

Exit status 0 when every scan found what it should, whatever the timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from broker.elf import elf  # noqa: E402

MB = 1024 * 1024


def write(path: Path, line: bytes, size: int) -> None:
    with open(path, "wb") as handle:
        block = line * (MB // len(line))
        for _ in range(size // len(block)):
            handle.write(block)
        handle.write(line * (size % len(block) // len(line)))


def read_only(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(elf._CHUNK):
            pass


def line_by_line(path: Path) -> int:
    """The former scan's inner loop (each line found and looked at in Python): lines seen."""
    lines = 0
    with open(path, "rb") as handle:
        data = bytearray()
        while True:
            chunk = handle.read(elf._CHUNK)
            if not chunk:
                return lines
            data += chunk
            start = 0
            while True:
                newline = data.find(b"\n", start)
                if newline < 0:
                    break
                elf._line_report(bytes(data[start:newline]), elf.DEFAULT_MAX_VALUE_BYTES)
                lines += 1
                start = newline + 1
            del data[:start]


def best(repeat: int, fn, *args) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="4 MB outputs, one run (CI)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = (4 if args.tiny else 200) * MB
    repeat = 1 if args.tiny else args.repeat
    outputs = [
        ("short ordinary lines (yes)", b"y\n", None),
        ("ordinary lines of 80 bytes", b"x" * 79 + b"\n", None),
        ("report lines", b"@broker progress 50\n@broker output n=1\n", [elf.ElfReport("progress", 50.0, None),
                                                                     elf.ElfReport("output", None, "n", 1)]),
    ]
    # and report lines all different (a progress and an output value counting up): each one parsed
    distinct = b"".join(b"@broker progress %d\n@broker output n=%d\n" % (i % 100, i) for i in range(1000))
    outputs.append(("distinct report lines", distinct, [elf.ElfReport("progress", 99.0, None),
                                                        elf.ElfReport("output", None, "n", 999)]))
    print(f"bench_output {dt.date.today()} | {os.cpu_count()} CPUs | outputs of {size // MB} MB, best of {repeat}")
    print(f"{'output':30} {'scan s':>8} {'MB/s':>8} {'read s':>8} {'x read':>7}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-output-") as tmp:
        for name, line, expected in outputs:
            path = Path(tmp) / "stdout"
            write(path, line, size)
            found = elf.scan(str(path))
            if found.reports != (expected or []) or found.offset != path.stat().st_size or found.ignored:
                print(f"{name}: wrong scan {found.reports[:3]} offset {found.offset} ignored {found.ignored}")
                ok = False
            scan_s = best(repeat, elf.scan, str(path))
            read_s = best(repeat, read_only, path)
            print(f"{name:30} {scan_s:8.3f} {size / MB / scan_s:8.0f} {read_s:8.3f} {scan_s / read_s:6.1f}x")
            if line == b"y\n":
                tenth = Path(tmp) / "tenth"
                write(tenth, line, size // 10)
                old_s = best(1, line_by_line, tenth)
                print(f"{'  line by line, a tenth':30} {old_s:8.3f} {size / 10 / MB / old_s:8.0f} "
                      f"{'':8} {'':7} (the whole file: about {old_s * 10 / scan_s:.0f}x the scan)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
