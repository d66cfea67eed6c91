"""The work-directory builder (issue 12, section 2, defence in depth): an attempt's directory lies strictly inside
its workflow's directory, as written and once existing symbolic links are resolved, whatever the node path."""

from __future__ import annotations

import os

import pytest

from broker.errors import ResourceError
from broker.launchers.workdir import attempt_dir

GID = "wf-01jd3k2m9x7q4tz8ha0c"


def test_a_node_path_becomes_directories_under_the_workflow(tmp_path):
    assert attempt_dir(tmp_path, GID, "sweep[3]/step", 2) == tmp_path / GID / "sweep@3" / "step" / "2"
    assert attempt_dir(tmp_path, GID, "-rf", 1) == tmp_path / GID / "-rf" / "1"  # odd but inside


def test_a_root_written_with_dot_dot_is_normalised_not_refused(tmp_path):
    (tmp_path / "a").mkdir()
    assert attempt_dir(f"{tmp_path}/a/../w/", GID, "n", 1) == tmp_path / "w" / GID / "n" / "1"


@pytest.mark.parametrize("node_path", ["..", ".", "s[0]/..", "a/../..", "a//b", "../../etc"])
def test_a_path_with_dot_segments_is_refused(tmp_path, node_path):
    with pytest.raises(ResourceError, match="is not inside its workflow's directory") as raised:
        attempt_dir(tmp_path, GID, node_path, 1)
    assert raised.value.retryable is False


def test_a_workflow_id_that_would_leave_the_root_is_refused(tmp_path):
    with pytest.raises(ResourceError):
        attempt_dir(tmp_path, "..", "n", 1)
    with pytest.raises(ResourceError):
        attempt_dir(tmp_path, "wf-x/../../y", "n", 1)


def test_a_symbolic_link_out_of_the_workflow_directory_is_refused(tmp_path):
    # a payload of node a could plant <workflow>/b -> /elsewhere before node b's first attempt
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    workflow_dir = tmp_path / "work" / GID
    workflow_dir.mkdir(parents=True)
    os.symlink(outside, workflow_dir / "b")
    with pytest.raises(ResourceError, match="node 'b'"):
        attempt_dir(tmp_path / "work", GID, "b", 1)
    os.symlink(workflow_dir / "inner-target", workflow_dir / "c")  # a link that stays inside is fine
    assert attempt_dir(tmp_path / "work", GID, "c", 1) == workflow_dir / "c" / "1"
