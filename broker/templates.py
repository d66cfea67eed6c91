"""Payload templates: the Jinja2 sandbox behind ``template="true"`` payloads (see :mod:`broker.render`).

Every ``{{ ... }}`` is quoted for the payload's language, so a value is data, never code:

=======  ==============================================================================================
type     how each substitution is written
=======  ==============================================================================================
sh/bash  ``shlex.quote``: one single-quoted word (``'it'"'"'s'``)
python   a str literal (``repr``): ``print({{ x }})``, not ``print("{{ x }}")``
csh      single-quoted (``'it'\\''s'``); a value with a newline or ``!`` is refused, because csh
         cannot quote them safely (history substitution acts inside single quotes)
=======  ==============================================================================================

Template variables: each parameter and each workflow argument by its name (when it is an identifier; the
two never share a name), ``params`` (name -> value), ``args`` (argument name -> value),
``node`` (``id``, ``path``, ``attempt``, ``member_index``, ``indexes``, ``workdir``) and ``workflow``
(``id``); ``params``, ``node`` and ``workflow`` win over parameters of the same name. Undefined names are
errors. Parameter values are strings.

Limits (the Jinja2 sandbox alone stops none of the first four): the rendered text is at most
``max_output_bytes``; every string or list a template builds (substitutions, ``~``, ``+``, ``*``, ``%``,
the ``join`` and ``replace`` filters) is charged to a budget of :data:`BUDGET_FACTOR` times that size per
render; integers stop at :data:`MAX_INT_BITS` bits; template code stops after ``time_limit`` seconds (:data:`broker.render.TIME_LIMIT`).
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
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from broker.errors import RenderError

#: what one render may build in all, as a multiple of max_output_bytes
BUDGET_FACTOR = 8
#: bits: largest integer a template may compute
MAX_INT_BITS = 4096
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


def check(payload_type: str, text: str, where: str) -> None:
    """Raise RenderError if ``text`` does not compile as a template of ``payload_type``."""
    try:
        _compile(payload_type, text)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{where}: payload template line {exc.lineno}: {exc.message}") from None


def render(payload_type: str, text: str, context: dict[str, Any], max_output_bytes: int, time_limit: float,
           where: str, params: dict[str, str]) -> str:
    """The rendered text; RenderError naming ``where`` and the template line on any refusal or error."""
    try:
        return _run(_compile(payload_type, text), context, max_output_bytes, time_limit)
    except (jinja2.TemplateError, _Refused, ArithmeticError, LookupError, TypeError, ValueError,
            RecursionError, MemoryError) as exc:
        raise RenderError(_explain(exc, where, params)) from None


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
