"""The XML of getWorkflowAsXml and getNodeAsXml, as defined by ``schemas/workflow-state.xsd``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

from lxml import etree

from broker.persistence.models import Attempt, Node, Workflow
from broker.printable import xml_safe

STATE_NS = "urn:workflow-broker:state:1"
_Q = "{%s}%%s" % STATE_NS


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat()


def _text(value: Any) -> str:
    return xml_safe(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _attrs(element: Any, **values: Any) -> None:
    for name, value in values.items():
        if value is not None:
            element.set(name, _text(value) if isinstance(value, str) else str(value))


def _attempt_element(parent: Any, attempt: Attempt) -> None:
    element = etree.SubElement(parent, _Q % "attempt")
    _attrs(element, number=attempt.number, outcome=attempt.outcome, host=attempt.host, account=attempt.account,
           jobId=attempt.job_id, workdir=attempt.workdir, exitCode=attempt.exit_code, queued=_time(attempt.queued_at),
           started=_time(attempt.started_at), finished=_time(attempt.finished_at))
    if attempt.message:
        etree.SubElement(element, _Q % "message").text = _text(attempt.message)


def _node_element(parent: Any, node: Node, wf_gid: str, attempts: Mapping[int, list[Attempt]]) -> Any:
    element = etree.SubElement(parent, _Q % "node")
    _attrs(element, id=node.id, globalId=f"{wf_gid}/{node.path}", path=node.path, kind=node.kind, state=node.state,
           attempt=node.attempt, memberIndex=node.member_index, members=node.members, progress=node.progress,
           host=node.host, jobId=node.job_id, exitCode=node.exit_code, started=_time(node.started_at),
           finished=_time(node.finished_at))
    for name, value in node.bindings or ():
        _attrs(etree.SubElement(element, _Q % "binding"), name=str(name))
        element[-1].text = _text(str(value))
    if node.message:
        etree.SubElement(element, _Q % "message").text = _text(node.message)
    for name, value in sorted((node.outputs or {}).items()):
        out = etree.SubElement(element, _Q % "output", name=_text(name))
        out.text = _text(json.dumps(value, ensure_ascii=False))
    for attempt in attempts.get(node.id, ()):
        _attempt_element(element, attempt)
    return element


def _tree(parent: Any, nodes: Iterable[Node], top: Iterable[Node], wf_gid: str,
          attempts: Mapping[int, list[Attempt]]) -> None:
    """Nest nodes under their enclosing group (parent_id), children in creation order."""
    children: dict[int, list[Node]] = {}
    for node in nodes:
        if node.parent_id is not None:
            children.setdefault(node.parent_id, []).append(node)
    stack = [(parent, node) for node in reversed(list(top))]
    while stack:  # iterative: nesting depth is bounded by the limits, but recursion is not needed
        into, node = stack.pop()
        element = _node_element(into, node, wf_gid, attempts)
        stack.extend((element, child) for child in reversed(children.get(node.id, ())))


def workflow_xml(workflow: Workflow, owner: str, nodes: list[Node], counts: dict[str, int],
                 attempts: Mapping[int, list[Attempt]] | None = None) -> str:
    """``<workflowState>`` of a workflow with every node; with ``attempts`` (node id -> its attempts, as in an
    archive), every attempt of each node too."""
    root = etree.Element(_Q % "workflowState", nsmap={None: STATE_NS})
    _attrs(root, id=workflow.id, globalId=workflow.global_id, name=workflow.name, owner=owner, label=workflow.label,
           experimentId=workflow.experiment_id, state=workflow.state,
           cancelRequested="true" if workflow.cancel_requested else "false", priority=workflow.priority,
           submitted=_time(workflow.submitted_at), started=_time(workflow.started_at),
           finished=_time(workflow.finished_at), storedName=workflow.origin_name,
           storedVersion=workflow.origin_version)
    for name, value in workflow.arguments or ():
        etree.SubElement(root, _Q % "argument", name=_text(str(name))).text = _text(str(value))
    for state, count in sorted(counts.items()):
        _attrs(etree.SubElement(root, _Q % "count"), state=state, nodes=count)
    _tree(root, nodes, [n for n in nodes if n.parent_id is None], workflow.global_id, attempts or {})
    return etree.tostring(root, encoding="unicode")


def node_xml(workflow: Workflow, node: Node, subtree: list[Node], attempts: Mapping[int, list[Attempt]]) -> str:
    """``<nodeState>`` of one node with everything inside it, each with its attempts (node id -> attempts)."""
    root = etree.Element(_Q % "nodeState", nsmap={None: STATE_NS})
    _attrs(root, workflowId=workflow.id, workflowGlobalId=workflow.global_id)
    _tree(root, subtree, [node], workflow.global_id, attempts)
    return etree.tostring(root, encoding="unicode")
