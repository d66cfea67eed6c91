"""The one atomic-write helper: whole new content or the old one, never a part, never a leftover."""

from __future__ import annotations

import os
import stat

import pytest

from broker.admin.targets import FileTarget
from broker.atomic import PARTIAL_SUFFIX, atomic_write, partial_name, partial_writer


def test_the_new_content_replaces_the_old_one_whole_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")
    with atomic_write(target) as fh:
        fh.write(b"new ")
        assert target.read_bytes() == b"old"  # a reader meanwhile sees the old content
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
        fh.write(b"content")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_an_error_while_writing_leaves_the_target_as_it_was_and_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="producer failed"):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("producer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_the_mode_is_less_the_umask_unless_exact(tmp_path):
    old = os.umask(0o077)
    try:
        with atomic_write(tmp_path / "masked", mode=0o644) as fh:
            fh.write(b"x")
        with atomic_write(tmp_path / "exact", mode=0o644, exact_mode=True) as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "masked").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "exact").stat().st_mode) == 0o644


def test_a_partial_file_names_its_writer_and_is_hidden():
    name = partial_name("wf-1.xml")
    assert name.startswith(".wf-1.xml.") and name.endswith(PARTIAL_SUFFIX)
    assert partial_writer(name, "wf-1.xml") == os.getpid()
    assert partial_writer(name, "wf-2.xml") is None
    assert partial_writer("wf-1.xml", "wf-1.xml") is None


def test_an_archive_target_removes_the_partial_files_of_dead_writers_only(tmp_path):
    dead = tmp_path / f".wf-1.xml.{2**22 + 1}-abcd{PARTIAL_SUFFIX}"  # above pid_max's default: never alive
    alive = tmp_path / f".wf-1.xml.1-abcd{PARTIAL_SUFFIX}"  # pid 1 always runs
    dead.write_bytes(b"left by a crash")
    alive.write_bytes(b"being written")
    FileTarget(tmp_path).write("wf-1.xml", lambda fh: fh.write(b"<archive/>"))
    assert (tmp_path / "wf-1.xml").read_bytes() == b"<archive/>"
    assert not dead.exists() and alive.exists()
