"""The ``@broker`` report protocol: parsing single lines and scanning output files incrementally."""

import json

import pytest

from broker.elf import elf
from broker.elf.elf import ElfReport, parse_report_line, scan, scan_reports
from broker.launchers import base


def test_progress_with_and_without_a_message_is_parsed():
    assert parse_report_line('@broker progress 42 "half way"') == ElfReport("progress", 42.0, "half way")
    assert parse_report_line("@broker progress 7.5") == ElfReport("progress", 7.5, None)
    assert parse_report_line("@broker\tprogress\t100\t\"done\"\r\n") == ElfReport("progress", 100.0, "done")


@pytest.mark.parametrize("text, value", [
    ("1234", 1234), ("-1.5e3", -1500.0), ('"text"', "text"), ("true", True), ("null", None),
    ('[1, "two", {"three": 3}]', [1, "two", {"three": 3}]), ('{"a": {"b": []}}', {"a": {"b": []}}),
])
def test_outputs_carry_any_json_value(text, value):
    assert parse_report_line(f"@broker output rows={text}") == ElfReport("output", None, "rows", value)


def test_json_escapes_and_unicode_arrive_decoded():
    report = parse_report_line(r'@broker progress 1 "caf\u00e9 \"quoted\"\nline2 \\ 日本"')
    assert report.text == 'café "quoted"\nline2 \\ 日本'
    assert parse_report_line('@broker output name="日本語 🎉"').value == "日本語 🎉"


@pytest.mark.parametrize("line", [
    "@broker progress 101", "@broker progress -1", "@broker progress half", "@broker progress 5 unquoted",
    '@broker progress 5 ["not", "a string"]', "@broker output 1abc=1", "@broker output a-b=1",
    "@broker output " + "n" * 65 + "=1", "@broker output x=NaN", "@broker output x=Infinity",
    "@broker output x={bad json", '@broker output x="\\ud800"', "@broker output x=" + "[" * 100000,
    "@broker", "@broker frobnicate 1", "@broker output x",
])
def test_malformed_report_lines_are_refused(line):
    assert parse_report_line(line) is None


def test_a_name_of_64_characters_is_accepted():
    assert parse_report_line("@broker output " + "n" * 64 + "=1").text == "n" * 64


@pytest.mark.parametrize("line", ["hello", "  @broker progress 5", "@brokerage progress 5", ""])
def test_ordinary_lines_are_not_reports(line):
    assert parse_report_line(line) is None


def test_a_value_over_the_limit_is_refused_and_one_at_the_limit_accepted():
    at_limit = json.dumps("x" * 98)  # 100 bytes of JSON text
    assert parse_report_line(f"@broker output v={at_limit}", max_value_bytes=100).value == "x" * 98
    assert parse_report_line(f"@broker output v={json.dumps('x' * 99)}", max_value_bytes=100) is None


def test_elf_outcomes_and_report_fields_match_the_launcher_interface():
    assert (elf.SUCCEEDED, elf.FAILED, elf.TIMEOUT, elf.CANCELLED) == (
        base.SUCCEEDED, base.FAILED, base.TIMEOUT, base.CANCELLED)
    assert base.Report(*ElfReport("output", None, "x", 1)) == base.Report(kind="output", text="x", value=1)


def test_scan_counts_malformed_report_lines_but_not_ordinary_output(tmp_path):
    out = tmp_path / "stdout"
    out.write_bytes(b"hello\n@broker output a=1\n@broker output b=\n@brokerage\n\xff\xfe\n"
                    b"@broker progress 5 \"\xff\"\n@broker progress 50\n")
    found = scan(str(out))
    assert found.reports == [ElfReport("output", None, "a", 1), ElfReport("progress", 50.0, None)]
    assert found.ignored == 2
    assert found.offset == out.stat().st_size


def test_scan_leaves_a_partial_last_line_for_the_next_pass(tmp_path):
    out = tmp_path / "stdout"
    out.write_bytes(b"@broker output a=1\n@broker output b=2")
    reports, offset = scan_reports(str(out), 0)
    assert reports == [ElfReport("output", None, "a", 1)] and offset == len(b"@broker output a=1\n")
    with open(out, "ab") as handle:
        handle.write(b"3\n")
    reports, offset = scan_reports(str(out), offset)
    assert reports == [ElfReport("output", None, "b", 23)] and offset == out.stat().st_size
    assert scan_reports(str(out), offset) == ([], offset)


def test_a_final_scan_takes_the_last_line_without_a_newline(tmp_path):
    out = tmp_path / "stdout"
    out.write_bytes(b"@broker output a=1\r\n@broker progress 99")
    found = scan(str(out), 0, final=True)
    assert found.reports[-1] == ElfReport("progress", 99.0, None)
    assert found.offset == out.stat().st_size


def test_an_oversized_line_is_skipped_counted_once_and_the_next_line_still_read(tmp_path):
    out = tmp_path / "stdout"
    limit = 100
    head = b"@broker output big=\"" + b"x" * 5000
    out.write_bytes(head)
    first = scan(str(out), 0, max_value_bytes=limit)
    assert first.reports == [] and first.ignored == 1
    with open(out, "ab") as handle:  # the same line goes on, then ends, then a good line follows
        handle.write(b"y" * 3000 + b"\"\n@broker output small=2\n")
    second = scan(str(out), first.offset, max_value_bytes=limit)
    assert second.reports == [ElfReport("output", None, "small", 2)]
    assert second.ignored == 0
    assert scan(str(out), 0, max_value_bytes=limit) == (second.reports, out.stat().st_size, 1)


def test_a_long_ordinary_line_is_skipped_without_being_counted(tmp_path):
    out = tmp_path / "stdout"
    out.write_bytes(b"z" * 300_000 + b"\n@broker output n=1\n")
    found = scan(str(out), 0, max_value_bytes=1000)
    assert found.reports == [ElfReport("output", None, "n", 1)] and found.ignored == 0


def test_scanning_a_missing_file_finds_nothing(tmp_path):
    assert scan_reports(str(tmp_path / "nothing"), 7) == ([], 7)


def test_fold_keeps_the_last_progress_and_the_latest_value_of_each_output():
    outputs = {}
    progress = elf.fold([ElfReport("output", None, "a", 1), ElfReport("progress", 10.0, "x"),
                         ElfReport("output", None, "a", 2), ElfReport("progress", 20.0, None)], outputs, None)
    assert outputs == {"a": 2} and progress == (20.0, None)


# ------------------------------------------------------------------------------------------------ spawn

def test_a_spawn_line_names_a_file_and_the_last_one_wins():
    assert parse_report_line("@broker spawn more.xml") == ElfReport("spawn", None, "more.xml")
    assert parse_report_line("@broker spawn ../x.xml").text == "../x.xml"  # a spawn: reading it says why not
    assert parse_report_line("@broker spawn two words") is None
    assert parse_report_line("@broker spawn " + "x" * 1025) is None
    reports = [parse_report_line(line) for line in ("@broker spawn a.xml", "@broker output n=1", "@broker spawn b.xml")]
    outputs: dict = {}
    assert elf.fold(reports, outputs, None) is None and outputs == {"n": 1}  # a spawn is no progress
    assert elf.last_spawn(reports) == "b.xml" and elf.last_spawn([], "a.xml") == "a.xml"


def test_a_spawned_fragment_is_read_only_inside_the_work_directory_without_symlinks_and_size_capped(tmp_path):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "f.xml").write_text("<workflow/>")
    outside = tmp_path / "secret.xml"
    outside.write_text("secret")
    (work / "link.xml").symlink_to(outside)
    (work / "dir").symlink_to(tmp_path)
    (work / "big.xml").write_bytes(b"x" * 11)
    (work / "fifo").mkdir()

    def read(name: str, cap: int = elf.MAX_SPAWN_BYTES):
        return elf.read_spawn(str(work), name, cap)

    assert read("sub/f.xml") == ("<workflow/>", None)
    assert read("link.xml") == (None, "it is a symlink (not followed)")
    assert read("dir/secret.xml") == (None, "dir: not a directory inside the work directory (a symlink is not "
                                            "followed)")
    assert read("../secret.xml") == (None, "the file name must not have empty, '.' or '..' segments")
    assert read("sub/./f.xml")[1] == "the file name must not have empty, '.' or '..' segments"
    assert read(str(outside)) == (None, "the file name must be relative to the work directory")
    assert read("bad\x1bname")[1] == "the file name has control characters"
    assert read("big.xml", 10) == (None, "it is larger than 10 bytes")
    assert read("big.xml", 11) == ("x" * 11, None)
    assert read("fifo") == (None, "it is not a regular file")
    assert elf.spawn_status(str(work), "link.xml") == {"file": "link.xml", "error": "it is a symlink (not followed)"}
    assert elf.spawn_status(str(work), None) is None


# ------------------------------------------------------------------------------------- floods of output

def _reference(data: bytes, max_value_bytes: int = elf.DEFAULT_MAX_VALUE_BYTES) -> tuple[dict, object, int]:
    """(outputs, progress, malformed report lines) of data's complete lines, one line at a time."""
    outputs: dict = {}
    progress = None
    bad = 0
    for line in data.split(b"\n")[:-1]:
        report = None
        try:
            report = parse_report_line(line.decode("utf-8"), max_value_bytes)
        except UnicodeDecodeError:
            pass
        if report is None:
            bad += elf._is_report_start(line.rstrip(b"\r")[:8])
            continue
        progress = elf.fold([report], outputs, progress)
    return outputs, progress, bad


def test_passes_of_any_size_over_any_chunks_find_what_reading_line_by_line_finds(tmp_path, monkeypatch):
    import random

    rng = random.Random(18)
    pieces = [b"y", b"", b"hello world", b"@brokerage 1", b"@broker progress 150", b"@broker", b"\xff\xfe",
              b"@broker output a=1", b"@broker output b=\"two\"\r", b"@broker progress 7 \"m\"", b"@bro",
              b"@broker spawn s.xml", b"z" * 40, b"@broker output a=3"]
    data = b"\n".join(rng.choice(pieces) for _ in range(3000)) + b"\n"
    want = _reference(data)
    out = tmp_path / "stdout"
    for chunk in (1, 3, 7, 8, 9, 64, 65536):
        monkeypatch.setattr(elf, "_CHUNK", chunk)
        out.write_bytes(b"")
        offset, outputs, progress, ignored, written = 0, {}, None, 0, 0
        while written < len(data):  # the payload goes on writing between passes, cutting lines anywhere
            step = rng.randint(1, 700)
            with open(out, "ab") as handle:
                handle.write(data[written:written + step])
            written += step
            found = scan(str(out), offset)
            assert found.offset <= min(written, len(data))
            progress = elf.fold(found.reports, outputs, progress)
            offset, ignored = found.offset, ignored + found.ignored
        assert (outputs, progress, ignored) == want, chunk


def test_ordinary_lines_are_skipped_without_being_looked_at_one_by_one(tmp_path, monkeypatch):
    looked_at = []
    real = elf._line_report
    monkeypatch.setattr(elf, "_line_report", lambda raw, limit: looked_at.append(raw) or real(raw, limit))
    out = tmp_path / "stdout"
    out.write_bytes(b"y\n" * 500_000 + b"@broker output n=1\n" + b"yes\n" * 100_000 + b"@broker progress 5\n")
    found = scan(str(out))
    assert found.reports == [ElfReport("output", None, "n", 1), ElfReport("progress", 5.0, None)]
    assert looked_at == [b"@broker output n=1", b"@broker progress 5"]
    assert found.offset == out.stat().st_size


def test_a_partial_ordinary_line_is_left_behind_and_its_rest_skipped_by_the_next_pass(tmp_path):
    out = tmp_path / "stdout"
    out.write_bytes(b"@broker output a=1\nsome ordinary text, not ended")
    first = scan(str(out))
    assert first.reports == [ElfReport("output", None, "a", 1)] and first.offset == out.stat().st_size
    with open(out, "ab") as handle:
        handle.write(b" @broker output b=2\n@broker output c=3\n")
    assert scan(str(out), first.offset).reports == [ElfReport("output", None, "c", 3)]


def test_a_flood_of_reports_comes_back_as_the_last_of_each(tmp_path):
    out = tmp_path / "stdout"
    out.write_bytes(b"".join(b"@broker progress %d\n@broker output n=%d\n" % (i % 100, i) for i in range(200_000)))
    found = scan(str(out))
    # in the order of their last lines
    assert found.reports == [ElfReport("progress", 99.0, None), ElfReport("output", None, "n", 199_999)]


def test_output_names_past_the_limit_are_ignored_and_counted_while_known_ones_still_change(tmp_path):
    out = tmp_path / "stdout"
    names = elf.MAX_OUTPUT_NAMES + 5
    out.write_bytes(b"".join(b"@broker output n%d=1\n" % i for i in range(names)) + b"@broker output n0=2\n")
    found = scan(str(out))
    assert found.ignored == 5
    outputs: dict = {}
    elf.fold(found.reports, outputs, None)
    assert len(outputs) == elf.MAX_OUTPUT_NAMES and outputs["n0"] == 2 and f"n{names - 1}" not in outputs
    # across passes, fold keeps the same bound
    more: dict = {f"m{i}": 0 for i in range(elf.MAX_OUTPUT_NAMES)}
    elf.fold([ElfReport("output", None, "new", 1), ElfReport("output", None, "m0", 5)], more, None)
    assert "new" not in more and more["m0"] == 5


def test_output_values_past_max_outputs_bytes_together_are_ignored_and_counted(tmp_path):
    # 16 values of a million characters (1,000,002 bytes of JSON text each) and one of 750,000 fill all but
    # 27,182 bytes of the 16 MiB an attempt may hold: a new value, or a kept one grown by 48,000 bytes, no longer
    # fits; once a kept value shrinks, the new one does
    out = tmp_path / "stdout"

    def line(name: str, char: bytes, count: int) -> bytes:
        return b'@broker output %s="%s"\n' % (name.encode(), char * count)

    out.write_bytes(b"".join(line(f"b{i}", b"x", 1_000_000) for i in range(16)) + line("b16", b"z", 750_000)
                    + line("b17", b"z", 100_000) + line("b1", b"y", 1_048_000) + line("b0", b"s", 5)
                    + line("b17", b"w", 100_000))
    found = scan(str(out))
    outputs: dict = {}
    budget = elf.OutputBudget(elf.outputs_limit(elf.DEFAULT_MAX_VALUE_BYTES))
    elf.fold(found.reports, outputs, None, budget)
    sizes = {name: (len(value), value[0]) for name, value in outputs.items()}
    assert sizes == {**{f"b{i}": (1_000_000, "x") for i in range(2, 16)}, "b1": (1_000_000, "x"),
                     "b0": (5, "s"), "b16": (750_000, "z"), "b17": (100_000, "w")}
    assert found.ignored == 2  # the first b17, and b1 grown
    assert budget.total == sum(elf.value_size(v) for v in outputs.values()) <= elf.MAX_OUTPUTS_BYTES
    # across passes, fold keeps the same bound with the same budget
    elf.fold([ElfReport("output", None, "b0", "x" * 1_000_000), ElfReport("output", None, "new", "n")],
             outputs, None, budget)
    assert len(outputs["b0"]) == 5 and "new" in outputs
    # a value larger than the total alone still fits when one value may be that large
    assert elf.outputs_limit(32 * 1024**2) == 32 * 1024**2


def test_the_final_status_holds_outputs_within_max_outputs_bytes(tmp_path, monkeypatch):
    # the status file is what the broker reads from a remote host: bounded as the scan is
    monkeypatch.setattr(elf, "MAX_OUTPUTS_BYTES", 10_000)
    (tmp_path / elf.STDOUT_FILE).write_text("".join(f'@broker output v{i}="{"y" * 998}"\n' for i in range(30)))
    status = elf.final_status(str(tmp_path), {}, None, 0, 0.0, 1000)
    assert sorted(status["outputs"]) == sorted(f"v{i}" for i in range(10))
    assert status["ignored_lines"] == 20 and "20 @broker lines ignored" in status["message"]
    assert elf.value_size(status["outputs"]) < 10_100


def test_a_read_with_a_budget_stops_near_it_and_the_next_reads_go_on_to_every_report(tmp_path, monkeypatch):
    monkeypatch.setattr(elf, "_CHUNK", 100)
    out = tmp_path / "stdout"
    out.write_bytes(b"@broker output a=1\n" + b"y\n" * 5000 + b"@broker output b=2\n" + b"long line " * 300
                    + b"\n@broker progress 9")
    offset, reports, passes = 0, [], 0
    while True:
        found = scan(str(out), offset, budget=1000)
        assert found.offset - offset <= 1000 + 100  # a chunk past the budget at most
        reports += found.reports
        passes += 1
        if found.offset == offset:
            break
        offset = found.offset
    assert reports == [ElfReport("output", None, "a", 1), ElfReport("output", None, "b", 2)]
    assert passes > 10
    # the end's read takes everything left, the unfinished last line included, whatever the budget
    assert scan(str(out), offset, final=True, budget=10).reports == [ElfReport("progress", 9.0, None)]


def test_a_read_with_a_budget_parses_a_bounded_number_of_distinct_report_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(elf, "SCAN_PARSES", 100)
    out = tmp_path / "stdout"
    out.write_bytes(b"".join(b"@broker progress %d\n@broker output n%d=%d\n" % (i % 100, i % 50, i)
                             for i in range(300)) + b"@broker progress 5\n" * 1000)
    first = scan(str(out), 0, budget=10**9)
    assert first.offset < out.stat().st_size and len(first.reports) <= 100
    offset, outputs, progress = 0, {}, None
    while True:
        found = scan(str(out), offset, budget=10**9)
        progress = elf.fold(found.reports, outputs, progress)
        if found.offset == offset:
            break
        offset = found.offset
    whole = scan(str(out))
    assert offset == out.stat().st_size
    assert (outputs, progress) == ({f"n{i}": 250 + i for i in range(50)}, (5.0, None))
    assert elf.fold(whole.reports, {}, None) == progress


def test_past_max_parses_the_ends_read_skips_new_progress_lines_but_still_reads_every_output(tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(elf, "MAX_PARSES", 50)
    out = tmp_path / "stdout"
    out.write_bytes(b"".join(b"@broker progress %d \"step %d\"\n" % (i % 100, i) for i in range(200))
                    + b"@broker output n=1\n@broker progress 3 \"step 3\"\n@broker output m=[2]\n"
                    + b"@broker progress 9 \"last\"\n" + b"@broker output n=5\n")
    found = scan(str(out), 0, final=True)
    outputs: dict = {}
    progress = elf.fold(found.reports, outputs, None)
    assert outputs == {"n": 5, "m": [2]}  # every output, however many progress lines came first
    assert progress == (3.0, "step 3")  # parsed before: taken; "last", new past the limit: skipped
    assert found.ignored == 0 and found.offset == out.stat().st_size
