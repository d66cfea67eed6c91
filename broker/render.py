"""Payload rendering: the script text and environment of one node attempt.

Parameter values reach a payload through its environment, always: ``WB_PARAM_<name>``. With
``template="true"`` the payload text is also a sandboxed Jinja2 template in which every ``{{ ... }}`` is
quoted for the payload's language, so a value is data, never code:

=======  ==============================================================================================
type     how each substitution is written
=======  ==============================================================================================
sh/bash  ``shlex.quote``: one single-quoted word (``'it'"'"'s'``)
python   a str literal (``repr``): ``print({{ x }})``, not ``print("{{ x }}")``
csh      single-quoted (``'it'\\''s'``); a value with a newline or ``!`` is refused, because csh
         cannot quote them safely (history substitution acts inside single quotes)
=======  ==============================================================================================

Template variables: each parameter by its name (when it is an identifier), ``params`` (name -> value),
``node`` (``id``, ``path``, ``attempt``, ``member_index``, ``indexes``, ``workdir``) and ``workflow``
(``id``); ``params``, ``node`` and ``workflow`` win over parameters of the same name. Undefined names are
errors. Parameter values are strings.

Environment variables the broker sets (they come after the execution profile's, so they always win, and a
parameter can never replace ``PATH`` or ``LD_PRELOAD`` because its name is prefixed):

====================  ================================================================================
``WB_WORKFLOW_ID``    the workflow's global id
``WB_NODE_PATH``      the node path, e.g. ``sweep[3]/step``
``WB_NODE_ID``        the node's global id, ``<workflow id>/<node path>``
``WB_ATTEMPT``        the attempt number, from 1
``WB_MEMBER_INDEX``   the index of the innermost sweep member the node belongs to (only inside sweeps)
``WB_WORKDIR``        the attempt's work directory (set by the launcher)
``WB_PARAM_<name>``   each parameter binding; inner sweeps win over outer ones with the same name
====================  ================================================================================

Limits (the Jinja2 sandbox alone stops none of the first four): the rendered text is at most
``max_output_bytes``; every string or list a template builds (substitutions, ``~``, ``+``, ``*``, ``%``,
the ``join`` and ``replace`` filters) is charged to a budget of :data:`BUDGET_FACTOR` times that size per
render; integers stop at :data:`MAX_INT_BITS` bits; template code stops after :data:`TIME_LIMIT` seconds.
List, tuple and dict literals may hold only constants, and ``varargs``/``kwargs`` are refused, so a
template cannot build deeply shared structures whose comparison or printing would run unbounded in C.
Only text and numbers can be substituted. Attributes: an allowlist of str methods (none that pads or
formats), dict ``items``/``keys``/``values``/``get``, ``loop``; filters: a fixed allowlist; globals:
``range`` only (at most 100,000 items); no include, import or extends.
"""

from __future__ import annotations

import re
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from broker.description.expansion import ENV_PREFIX, PARAM_ENV_PREFIX
from broker.description.model import Payload
from broker.errors import RenderError

#: bytes: default largest rendered payload
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
#: what one render may build in all, as a multiple of max_output_bytes
BUDGET_FACTOR = 8
#: seconds of template code one render may run
TIME_LIMIT = 2.0
#: bits: largest integer a template may compute
MAX_INT_BITS = 4096
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX_RE = re.compile(r"\[(\d+)\]")
_PRINTF_RE = re.compile(r"%[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_SCALARS = (str, int, float, type(None))
#: str methods a template may call: none of them builds anything larger than its input
_STR_METHODS = frozenset((
    "capitalize casefold count endswith find isalnum isalpha isdecimal isdigit islower isnumeric isspace "
    "isupper lower lstrip partition removeprefix removesuffix rfind rpartition rsplit rstrip split "
    "splitlines startswith strip swapcase title upper").split())
_DICT_METHODS = frozenset(("items", "keys", "values", "get"))
#: filters kept from Jinja2's defaults (join and replace are replaced by bounded versions)
_FILTERS = frozenset((
    "abs capitalize count d default dictsort first float int items join last length list lower map max min "
    "reject rejectattr replace reverse round select selectattr sort string title tojson trim truncate unique "
    "upper wordcount").split())


class NodeInfo(NamedTuple):
    """Who a payload is rendered for."""

    workflow_global_id: str
    #: node path, e.g. ``sweep[3]/step``
    node_path: str
    attempt: int
    #: the attempt's work directory, if already known (the launcher sets WB_WORKDIR anyway)
    workdir: str | None = None


class Rendered(NamedTuple):
    """A rendered payload: its text and the (name, value) pairs to add to its environment, in order."""

    text: str
    env: tuple[tuple[str, str], ...]


class _Refused(Exception):
    """A limit or quoting rule stopped the template (becomes a RenderError naming the node)."""


def _shorten(value: str, size: int = 40) -> str:
    return repr(value if len(value) <= size else value[:size] + "...")


def _csh_quote(value: str) -> str:
    for bad, what in (("\n", "a newline"), ("!", "'!'")):
        if bad in value:
            raise _Refused(f"{_shorten(value)} contains {what}, which csh cannot quote safely")
    return "'" + value.replace("'", "'\\''") + "'"


#: payload type -> how a substituted value is written
_QUOTE = {"sh": shlex.quote, "bash": shlex.quote, "python": repr, "csh": _csh_quote}


def _weight(value: Any) -> int:
    """Roughly how many bytes a value holds (containers are shallow here: see the literal rule)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value) + sum(_weight(v) for v in value)
    if isinstance(value, dict):
        return len(value) + sum(_weight(k) + _weight(v) for k, v in value.items())
    return 1


class _Budget:
    """Per render: bytes left to build, and a trace function that stops template code past its deadline."""

    def __init__(self, max_bytes: int, seconds: float):
        self.left = max_bytes * BUDGET_FACTOR
        self.total = self.left
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.ticks = 0

    def charge(self, size: int, what: str) -> None:
        self.left -= size
        if self.left < 0:
            raise _Refused(f"{what} exceeds what one render may build ({self.total} bytes)")

    def on_call(self, frame: Any, event: str, arg: Any) -> Any:
        return self.on_line if frame.f_code.co_filename == "<template>" else None

    def on_line(self, frame: Any, event: str, arg: Any) -> Any:
        self.ticks += 1
        if self.ticks % 1000 == 0 and time.monotonic() > self.deadline:
            raise _Refused(f"rendering took longer than {self.seconds:g} s")
        return self.on_line


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a charged join (Jinja2 offers no hook for it)."""

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(SandboxedEnvironment):
    """The sandbox plus a size budget, attribute and filter allowlists, and the language's quoting."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(("*", "**", "+", "%"))

    def __init__(self, payload_type: str):
        super().__init__(autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                         finalize=self._finalize)
        self.payload_type = payload_type
        self.quote = _QUOTE[payload_type]
        self.local = threading.local()
        self.globals = {"range": self.globals["range"]}  # the sandbox's bounded range, nothing else
        self.filters = {name: f for name, f in self.filters.items() if name in _FILTERS}
        self.filters.update(join=self._join, replace=self._replace)

    def charge(self, size: int, what: str) -> None:
        self.local.budget.charge(size, what)

    def _text(self, value: Any, what: str) -> str:
        if isinstance(value, jinja2.Undefined):
            str(value)  # raises the undefined (or unsafe attribute) error
        if not isinstance(value, _SCALARS):
            raise _Refused(f"{what} accepts only text and numbers, not {type(value).__name__} "
                           "(use the join filter for lists)")
        return "" if value is None else str(value)

    def _finalize(self, value: Any) -> str:
        text = self._text(value, "a substitution")
        if "\0" in text and self.payload_type != "python":
            raise _Refused(f"{_shorten(text)} contains a NUL character")
        quoted = self.quote(text)
        self.charge(len(quoted), "a substitution")
        return quoted

    def bounded_join(self, parts: Sequence[Any]) -> str:
        strings = [self._text(p, "~") for p in parts]
        self.charge(sum(map(len, strings)), "a concatenation (~)")
        return "".join(strings)

    def _join(self, value: Any, d: str = "", attribute: Any = None) -> str:
        items = []
        for item in value:
            text = self._text(item if attribute is None else self.getattr(item, attribute), "join")
            self.charge(len(text) + len(d), "the join filter")
            items.append(text)
        return d.join(items)

    def _replace(self, s: Any, old: str, new: str, count: int | None = None) -> str:
        s = self._text(s, "replace")
        hits = len(s) + 1 if old == "" else s.count(old)
        hits = hits if count is None or count < 0 else min(hits, count)
        self.charge(len(s) + hits * max(0, len(new) - len(old)), "the replace filter")
        return s.replace(old, new) if count is None else s.replace(old, new, count)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if isinstance(left, int) and isinstance(right, int):
            bits = {"**": left.bit_length() * max(right, 0), "*": left.bit_length() + right.bit_length()}
            if bits.get(operator, 0) > MAX_INT_BITS:
                raise _Refused(f"a number of about {bits[operator]} bits exceeds the limit of {MAX_INT_BITS}")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    self.charge(_weight(seq) * max(n, 0), "a repetition (*)")
        elif operator == "+" and isinstance(left, (str, list, tuple)):
            self.charge(_weight(left) + _weight(right), "a concatenation (+)")
        elif operator == "%" and isinstance(left, str):
            fields = [w for pair in _PRINTF_RE.findall(left) for w in pair]
            if "*" in fields:
                raise _Refused("'*' widths in % formatting are not allowed")
            self.charge(len(left) + sum(int(w) for w in fields if w) + _weight(right), "a % formatting")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, str):
            return attr in _STR_METHODS
        if isinstance(obj, dict):
            return attr in _DICT_METHODS
        return isinstance(obj, LoopContext)

    def wrap_str_format(self, value: Any) -> None:
        return None  # str.format and format_map are then refused by is_safe_attribute: widths are unbounded


def _check_tree(tree: nodes.Template) -> None:
    """Refuse the constructs that could build deeply shared structures (see the module docstring)."""
    for node in tree.find_all((nodes.List, nodes.Tuple, nodes.Dict, nodes.Name, nodes.Include, nodes.Extends,
                               nodes.Import, nodes.FromImport)):
        if isinstance(node, (nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
            raise jinja2.TemplateSyntaxError("include, import and extends are not available", node.lineno)
        if isinstance(node, nodes.Name):
            if node.name in ("varargs", "kwargs"):
                raise jinja2.TemplateSyntaxError(f"'{node.name}' is not allowed", node.lineno)
            continue
        if isinstance(node, nodes.Tuple) and node.ctx == "store":
            continue
        items = [v for pair in node.items for v in (pair.key, pair.value)] if isinstance(node, nodes.Dict) \
            else node.items
        if not all(isinstance(item, nodes.Const) for item in items):
            raise jinja2.TemplateSyntaxError("list, tuple and dict literals may hold only constants",
                                             node.lineno)


@lru_cache(maxsize=8)
def _environment(payload_type: str) -> _Sandbox:
    return _Sandbox(payload_type)


@lru_cache(maxsize=64)
def _compile(payload_type: str, text: str) -> jinja2.Template:
    env = _environment(payload_type)
    tree = env.parse(text)
    _check_tree(tree)
    return env.from_string(tree)


def _run(template: jinja2.Template, context: dict[str, Any], max_bytes: int, time_limit: float) -> str:
    env = template.environment
    budget = env.local.budget = _Budget(max_bytes, time_limit)
    chunks: list[str] = []
    size = 0
    previous = sys.gettrace()
    sys.settrace(budget.on_call)
    try:
        for chunk in template.generate(context):
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                raise _Refused(f"the rendered payload exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        sys.settrace(previous)
        env.local.budget = None
    return "".join(chunks)


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception came from (Jinja2 rewrites tracebacks to show template lines)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def check_template(payload: Payload, *, where: str = "payload") -> None:
    """Raise RenderError if ``payload`` is a template that does not compile (to refuse it at submission)."""
    if payload.template:
        try:
            _compile(payload.type, payload.text)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"{where}: payload template line {exc.lineno}: {exc.message}") from None


def render(payload: Payload, *, node: NodeInfo, bindings: Sequence[tuple[str, str]] = (),
           env: Sequence[tuple[str, str]] = (), max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
           time_limit: float = TIME_LIMIT) -> Rendered:
    """The text and environment of one attempt of ``node``.

    ``bindings`` are the parameter values, outer sweeps first; ``env`` is the execution profile's
    environment. Raises RenderError, naming the node and the template line, when the template is invalid,
    uses an undefined name, breaks the sandbox or a limit, or a value cannot be quoted for the language.
    """
    where = f"node '{node.node_path}'"
    params = dict(bindings)
    for name, value in params.items():
        if "\0" in value:
            raise RenderError(f"{where}: the value of parameter '{name}' contains a NUL character")
    indexes = [int(i) for i in _INDEX_RE.findall(node.node_path)]
    node_id = f"{node.workflow_global_id}/{node.node_path}"
    pairs = {name: value for name, value in env if not name.startswith(ENV_PREFIX)}
    pairs.update((PARAM_ENV_PREFIX + name, value) for name, value in params.items())
    pairs.update(WB_WORKFLOW_ID=node.workflow_global_id, WB_NODE_PATH=node.node_path, WB_NODE_ID=node_id,
                 WB_ATTEMPT=str(node.attempt))
    if indexes:
        pairs["WB_MEMBER_INDEX"] = str(indexes[-1])
    if node.workdir is not None:
        pairs["WB_WORKDIR"] = node.workdir
    if not payload.template:
        return Rendered(payload.text, tuple(pairs.items()))

    context: dict[str, Any] = {k: v for k, v in params.items() if _IDENTIFIER_RE.fullmatch(k)}
    context.update(params=params, workflow={"id": node.workflow_global_id},
                   node={"id": node_id, "path": node.node_path, "attempt": node.attempt,
                         "member_index": indexes[-1] if indexes else None, "indexes": indexes,
                         "workdir": node.workdir})
    try:
        text = _run(_compile(payload.type, payload.text), context, max_output_bytes, time_limit)
    except (jinja2.TemplateError, _Refused, ArithmeticError, LookupError, TypeError, ValueError,
            RecursionError, MemoryError) as exc:
        raise RenderError(_explain(exc, where, params)) from None
    return Rendered(text, tuple(pairs.items()))


def _explain(exc: BaseException, where: str, params: dict[str, str]) -> str:
    line = _template_line(exc)
    at = f"{where}: payload template" + (f" line {line}" if line else "")
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"{at}: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"{at}: refused by the sandbox: {exc}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"{at}: {exc.message}"
    message = str(exc)
    if isinstance(exc, _Refused):
        for name, value in params.items():
            if message.startswith(_shorten(value)):
                return f"{at}: the value of parameter '{name}' ({message})"
        return f"{at}: {message}"
    return f"{at}: {type(exc).__name__}: {message}"
