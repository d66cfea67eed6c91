"""Build a :class:`~broker.description.model.WorkflowSpec` from a schema-valid description tree.

The builder also makes the checks that concern one element (each reported at that element's line):
profiles (unknown, duplicate), directives outside the allowlist, reserved ``WB_`` environment names,
``<requires>`` forms, payloads (files, emptiness, template syntax), parameter values (ranges, line files,
value counts) and duplicate outputs. Checks across nodes (ids, references, cycles, limits) are in
:mod:`broker.description.checks`. The builder never stops at a problem: it records it, substitutes a
harmless value and goes on, so that one run reports everything.
"""

from __future__ import annotations

import textwrap
from decimal import Decimal

from lxml import etree

from broker.config import Settings
from broker.description.expansion import ENV_PREFIX
from broker.description.includes import IncludeError, read_include
from broker.description.declared import build_parameters, from_argument
from broker.description.model import (
    AnyNode, Execution, NodeSpec, Param, ParameterSpec, Payload, Requires, Retry, Scheduling, Stage, SweepSpec,
    WorkflowSpec,
)
from broker.description.schema import NAMESPACE
from broker.description.units import parse_decimal, parse_duration, parse_size, range_values
from broker.errors import Problem, RenderError
from broker.states import FailureConstraint

_Q = f"{{{NAMESPACE}}}"
NODE, SWEEP, BODY, PARAM = _Q + "node", _Q + "sweep", _Q + "body", _Q + "param"
DESCRIPTION, DEPENDS_ON, REQUIRES, PAYLOAD = _Q + "description", _Q + "dependsOn", _Q + "requires", _Q + "payload"
SCHEDULING, EXECUTION, OUTPUT = _Q + "scheduling", _Q + "execution", _Q + "output"
STAGE_IN, STAGE_OUT = _Q + "stageIn", _Q + "stageOut"
_TRUE = ("true", "1")  # xs:boolean's true forms
_NO_SCHEDULING, _NO_EXECUTION, _NO_REQUIRES = Scheduling(), Execution(), Requires()


def _local(el: etree._Element) -> str:
    return el.tag[len(_Q):] if el.tag.startswith(_Q) else el.tag


def _text(el: etree._Element) -> str:
    return (el.text or "").strip()


def inline_script(text: str) -> str:
    """An inline payload as a script: common indentation and surrounding blank lines removed.

    Descriptions indent payloads with the XML around them; Python payloads would not run indented.
    """
    if "\n" not in text:  # the common one-liner: nothing to dedent
        body = text.strip()
    else:
        body = textwrap.dedent(text).strip("\n")
    return body + "\n" if body.strip() else ""


def _template_error(payload_type: str, text: str) -> str | None:
    """Why a payload template would be refused at run time, or None when it compiles.

    The renderer's own check (sandboxed Jinja2 plus its restrictions), so that a description this layer
    accepts is never refused at launch for its template syntax.
    """
    from broker import templates  # Jinja2 is imported only when a payload is a template

    try:
        templates.check(payload_type, text, "-")
    except RenderError as exc:
        return str(exc).removeprefix("-: ").rstrip(".")
    return None


class _Builder:
    """Turns one schema-valid tree into a spec, collecting problems as it goes."""

    def __init__(self, settings: Settings, filename: str):
        self.settings = settings
        self.file = filename
        self.problems: list[Problem] = []
        self.scheduling_profiles: dict[str, tuple[Scheduling, int]] = {}
        self.execution_profiles: dict[str, tuple[Execution, int]] = {}
        self._allowed = frozenset(settings.description.allowed_directives)
        # generated descriptions repeat one template in many nodes: check each distinct text once
        self._templates: dict[tuple[str, str], str | None] = {}
        #: the workflow's declared parameters (declared before any node, so known when sweeps are built)
        self.declared: dict[str, ParameterSpec] = {}

    def problem(self, el: etree._Element | int, message: str) -> None:
        line = el if isinstance(el, int) else (el.sourceline or 1)
        self.problems.append(Problem(self.file, line, 0, message))

    def template_error(self, payload_type: str, text: str) -> str | None:
        key = (payload_type, text)
        if key not in self._templates:
            self._templates[key] = _template_error(payload_type, text)
        return self._templates[key]

    # ------------------------------------------------------------------------------------------ workflow

    def workflow(self, root: etree._Element) -> WorkflowSpec:
        description, resources, failure, nodes = None, (), FailureConstraint(), []
        parameters: tuple[ParameterSpec, ...] = ()
        for child in root:
            tag = child.tag
            if tag == NODE or tag == SWEEP:
                nodes.append(child)
            elif tag == _Q + "parameters":
                parameters = build_parameters(child, self.settings.limits, self.problem)
                self.declared = {p.name: p for p in parameters}
            elif tag == DESCRIPTION:
                description = _text(child)
            elif tag == _Q + "resources":
                resources = tuple(_text(h) for h in child)
            elif tag == _Q + "failureConstraint":
                failure = self.failure(child)
            elif tag == _Q + "profiles":
                self.profiles(child)
        max_in_flight = root.get("maxInFlight")
        return WorkflowSpec(
            name=root.get("name", ""), nodes=self.scope(nodes, ""), event_level=root.get("eventLevel", "STATUS"),
            priority=int(root.get("priority", "0")), publish_metadata_to=root.get("publishMetadataTo"),
            resources=resources, failure=failure,
            max_in_flight=int(max_in_flight) if max_in_flight is not None else None, description=description,
            parameters=parameters)

    def failure(self, el: etree._Element) -> FailureConstraint:
        fraction = el.get("fraction")
        return FailureConstraint(max_failed=int(el.get("maxFailed", "0")),
                                 fraction=float(Decimal(fraction.strip())) if fraction is not None else None,
                                 on_failure=el.get("onFailure", "continue").strip())

    def profiles(self, el: etree._Element) -> None:
        for child in el:
            name = child.get("name", "")
            if child.tag == SCHEDULING:
                table, kind = self.scheduling_profiles, "scheduling"
                value = self.scheduling(child, f"scheduling profile '{name}': ")
            else:
                table, kind = self.execution_profiles, "execution"
                value = self.execution(child, f"execution profile '{name}': ")
            if name in table:
                self.problem(child, f"duplicate {kind} profile '{name}' (first defined at line {table[name][1]})")
                continue
            table[name] = (value, child.sourceline or 1)

    # ------------------------------------------------------------------------------------------ blocks

    def scheduling(self, el: etree._Element, who: str) -> Scheduling:
        hosts, tags, directives = [], [], []
        fields: dict[str, object] = {}
        for child in el:
            name, text = _local(child), _text(child)
            if name == "host":
                hosts.append(text)
            elif name == "tag":
                tags.append(text)
            elif name in ("nodes", "cores"):
                fields[name] = int(text)
            elif name == "memory":
                fields[name] = parse_size(text)
            elif name == "walltime":
                fields[name] = parse_duration(text)
            elif name in ("queue", "account"):
                fields[name] = text
            elif name == "directive":
                directive = child.get("name", "")
                if directive not in self._allowed:
                    allowed = " ".join(sorted(self._allowed)) or "none"
                    self.problem(child, f"{who}directive '{directive}' is not allowed "
                                        f"([description] allowed_directives: {allowed})")
                directives.append((directive, child.get("value")))
        return Scheduling(hosts=tuple(hosts), tags=tuple(dict.fromkeys(tags)), directives=tuple(directives),
                          **fields)  # type: ignore[arg-type]

    def execution(self, el: etree._Element, who: str) -> Execution:
        env: dict[str, str] = {}
        fields: dict[str, object] = {}
        for child in el:
            name = _local(child)
            if name == "env":
                key = child.get("name", "")
                if key.startswith(ENV_PREFIX):
                    self.problem(child, f"{who}environment variable '{key}' is reserved "
                                        f"(names starting with {ENV_PREFIX} belong to the broker)")
                env[key] = child.get("value", "")
            elif name in ("interpreter", "workdir"):
                fields[name] = _text(child)
            elif name == "timeout":
                fields[name] = parse_duration(_text(child))
            elif name == "retry":
                fields[name] = Retry(count=int(child.get("count", "0")),
                                     backoff=parse_duration(child.get("backoff", "10s")),
                                     max_backoff=parse_duration(child.get("maxBackoff", "10min")))
        return Execution(env=tuple(env.items()), **fields)  # type: ignore[arg-type]

    def _profile(self, el: etree._Element, attr: str, who: str, table: dict, inline, default):
        # the effective block: the named profile first, the node's inline block on top of it
        name = el.get(attr)
        base = None
        if name is not None:
            found = table.get(name)
            if found is None:
                self.problem(el, f"{who}unknown {attr} profile '{name}'")
            else:
                base = found[0]
        if base is not None and inline is not None:
            return base.merged(inline)
        return inline if inline is not None else base if base is not None else default

    def requires(self, el: etree._Element, depends: list[str], who: str) -> Requires:
        parents, tolerance = el.get("parents"), el.get("tolerance")
        if parents is not None and tolerance is not None:
            self.problem(el, f"{who}<requires> takes parents or tolerance, not both")
        elif parents is None and tolerance is None:
            self.problem(el, f"{who}<requires> needs parents or tolerance")
        names = tuple(parents.split()) if parents is not None else None
        for parent in names or ():
            if parent not in depends:
                self.problem(el, f"{who}requires parent '{parent}', which is not in its dependsOn")
        return Requires(parents=names,
                        tolerance=float(Decimal(tolerance.strip())) if tolerance is not None else None)

    def payload(self, el: etree._Element, who: str) -> Payload:
        kind, ref, inline = el.get("type", "sh"), el.get("ref"), el.text or ""
        template = el.get("template", "false").strip() in _TRUE
        if ref is None:
            text = inline_script(inline)
        elif inline.strip():
            self.problem(el, f"{who}payload has both a ref and inline text")
            return Payload(type=kind, text=inline, ref=ref, template=template)
        else:
            try:
                text = read_include(ref, self.settings)  # verbatim: a file is not indented XML
            except IncludeError as exc:
                self.problem(el, f"{who}payload ref '{ref}' {exc}")
                return Payload(type=kind, text="", ref=ref, template=template)
        if not text.strip():
            self.problem(el, f"{who}payload is empty")
        elif template and (error := self.template_error(kind, text)) is not None:
            self.problem(el, f"{who}{error}")
        return Payload(type=kind, text=text, ref=ref, template=template)

    # ------------------------------------------------------------------------------------------ nodes

    def scope(self, elements: list[etree._Element], prefix: str) -> tuple[AnyNode, ...]:
        return tuple(self.node(el, prefix) if el.tag == NODE else self.sweep(el, prefix) for el in elements)

    def node(self, el: etree._Element, prefix: str) -> NodeSpec:
        node_id = el.get("id", "")
        who = f"node '{prefix}{node_id}': "
        depends: list[str] = []
        description = requires = payload = None
        inline_scheduling = inline_execution = None
        stage_in: list[Stage] = []
        stage_out: list[Stage] = []
        outputs: list[str] = []
        for child in el:
            tag = child.tag
            if tag == DEPENDS_ON:
                depends.append(child.get("node", ""))
            elif tag == PAYLOAD:
                payload = self.payload(child, who)
            elif tag == STAGE_IN or tag == STAGE_OUT:
                stage = Stage(source=child.get("source", ""), target=child.get("target", ""),
                              checksum=child.get("checksum"))
                (stage_in if tag == STAGE_IN else stage_out).append(stage)
            elif tag == OUTPUT:
                name = child.get("name", "")
                if name in outputs:
                    self.problem(child, f"{who}duplicate output '{name}'")
                else:
                    outputs.append(name)
            elif tag == REQUIRES:
                requires = self.requires(child, depends, who)
            elif tag == SCHEDULING:
                inline_scheduling = self.scheduling(child, who)
            elif tag == EXECUTION:
                inline_execution = self.execution(child, who)
            elif tag == DESCRIPTION:
                description = _text(child)
        return NodeSpec(
            id=node_id, payload=payload or Payload(type="sh", text=""), line=el.sourceline or 0,
            priority=int(el.get("priority", "0")), depends=tuple(depends), requires=requires or _NO_REQUIRES,
            scheduling=self._profile(el, "scheduling", who, self.scheduling_profiles, inline_scheduling,
                                     _NO_SCHEDULING),
            execution=self._profile(el, "execution", who, self.execution_profiles, inline_execution,
                                    _NO_EXECUTION),
            stage_in=tuple(stage_in), stage_out=tuple(stage_out), outputs=tuple(outputs), description=description)

    def sweep(self, el: etree._Element, prefix: str) -> SweepSpec:
        sweep_id = el.get("id", "")
        path = prefix + sweep_id
        who = f"sweep '{path}': "
        depends: list[str] = []
        params: list[Param] = []
        body: tuple[AnyNode, ...] = ()
        description = requires = None
        for child in el:
            tag = child.tag
            if tag == PARAM:
                params.append(self.param(child, who))
            elif tag == BODY:
                body = self.scope(list(child), path + "/")
            elif tag == DEPENDS_ON:
                depends.append(child.get("node", ""))
            elif tag == REQUIRES:
                requires = self.requires(child, depends, who)
            elif tag == DESCRIPTION:
                description = _text(child)
        return SweepSpec(
            id=sweep_id, params=tuple(params), body=body, line=el.sourceline or 0,
            priority=int(el.get("priority", "0")), mode=el.get("mode", "cross").strip(),
            bundle=int(el.get("bundle", "1")), depends=tuple(depends), requires=requires or _NO_REQUIRES,
            description=description)

    def param(self, el: etree._Element, who: str) -> Param:
        name = el.get("name", "")
        who = f"{who}parameter '{name}': "
        line = el.sourceline or 0
        max_values = self.settings.limits.max_values
        first = el[0] if len(el) else None
        kind = _local(first) if first is not None else "value"
        if kind == "fromOutput":
            return Param(name=name, source="output", from_node=first.get("node"),
                         from_property=first.get("property"), line=line)
        if kind == "fromArgument":
            return from_argument(first, name, who, line, self.declared, self.settings.limits, self.problem)
        values: tuple[str, ...] = ()
        if kind == "value":
            if len(el) > max_values:
                self.problem(el, f"{who}{len(el)} values, over the limit of {max_values} ([limits] max_values)")
            else:
                values = tuple(v.text or "" for v in el)
            return Param(name=name, source="list", values=values, line=line)
        if kind == "range":
            try:
                values = range_values(parse_decimal(first.get("from", "")), parse_decimal(first.get("to", "")),
                                      parse_decimal(first.get("step", "1")), max_values=max_values)
            except ValueError as exc:
                self.problem(first, f"{who}<range>: {exc}")
            return Param(name=name, source="range", values=values, line=line)
        ref = first.get("file", "")
        try:
            lines = [v.strip() for v in read_include(ref, self.settings).splitlines()]
        except IncludeError as exc:
            self.problem(first, f"{who}lines file '{ref}' {exc}")
        else:
            values = tuple(v for v in lines if v)
            if len(values) > max_values:
                self.problem(first, f"{who}lines file '{ref}' has {len(values)} values, over the limit of "
                                    f"{max_values} ([limits] max_values)")
                values = ()
        return Param(name=name, source="lines", values=values, line=line)


def build_spec(tree: etree._ElementTree, settings: Settings, *,
               filename: str = "<string>") -> tuple[WorkflowSpec, list[Problem]]:
    """The spec of a schema-valid tree and the problems found while building it (possibly none)."""
    builder = _Builder(settings, filename)
    spec = builder.workflow(tree.getroot())
    return spec, builder.problems


__all__ = ["IncludeError", "build_spec", "inline_script", "read_include", "resolve_include"]
