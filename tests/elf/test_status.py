"""The status file: atomic replacement, tolerant reading, and refusal of another attempt's status."""

import os

from broker.elf.elf import STATUS_FILE, read_int_file, read_status, write_status


def test_a_status_written_is_read_back(tmp_path):
    write_status(str(tmp_path), {"session": "wf-x/a", "attempt": 2, "outcome": "succeeded", "exit_code": 0,
                                 "outputs": {"n": [1, "é"]}})
    status = read_status(str(tmp_path), attempt=2, session="wf-x/a")
    assert status["outcome"] == "succeeded" and status["outputs"] == {"n": [1, "é"]}
    assert status["version"] == 2  # 2: the spawn entry


def test_a_second_write_replaces_the_first_and_leaves_no_temporary_file(tmp_path):
    write_status(str(tmp_path), {"session": "s", "attempt": 1, "outcome": None})
    write_status(str(tmp_path), {"session": "s", "attempt": 1, "outcome": "failed"})
    assert read_status(str(tmp_path))["outcome"] == "failed"
    assert os.listdir(tmp_path) == [STATUS_FILE]
    assert (tmp_path / STATUS_FILE).stat().st_mode & 0o777 == 0o600


def test_reading_an_absent_or_corrupt_status_gives_none(tmp_path):
    assert read_status(str(tmp_path)) is None
    (tmp_path / STATUS_FILE).write_text('{"session": "s", "att')
    assert read_status(str(tmp_path)) is None
    (tmp_path / STATUS_FILE).write_text("[1, 2]")
    assert read_status(str(tmp_path)) is None


def test_a_status_of_another_attempt_or_session_is_ignored(tmp_path):
    write_status(str(tmp_path), {"session": "wf-x/a", "attempt": 1, "outcome": "failed"})
    assert read_status(str(tmp_path), attempt=2) is None
    assert read_status(str(tmp_path), session="wf-x/b") is None
    assert read_status(str(tmp_path), attempt=1, session="wf-x/a") is not None


def test_an_integer_file_counts_only_as_a_complete_line(tmp_path):
    path = tmp_path / "exit"
    assert read_int_file(str(path)) is None
    path.write_bytes(b"13")
    assert read_int_file(str(path)) is None
    path.write_bytes(b"137\n")
    assert read_int_file(str(path)) == 137
