"""The two spyne applications, the one place errors become SOAP faults, and the WSDLs.

Core (``IBrokerCore``) is served at ``<public_url>/broker`` and admin (``IBroker``, which offers every core
operation too, to admins only) at ``<public_url>/admin``: one application with both services would give an invalid WSDL (two ports with
the same name). Each WSDL is built once at start-up with the public URL in its ``soap:address`` and
cleaned of the SOAP 1.2 namespaces spyne declares but never uses (gSOAP would otherwise generate a SOAP
1.2 client that the SOAP 1.1 server rejects).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from lxml import etree
from spyne import Application, Fault
from spyne import const as spyne_const
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from broker.api.admin import BrokerAdminService
from broker.api.context import ApiContext
from broker.api.core import BrokerCoreService
from broker.api.faults import detail_xml, fault_for, log_fault, spyne_spec
from broker.printable import printable
from broker.api.identity import ELF_KEY, USER_KEY, caller, require_admin
from broker.api.types import ADMIN_NS, CORE_NS

log = logging.getLogger("broker.api")

#: path -> (application name, service class, namespace, admins only)
SERVICES = {
    "/broker": ("IBrokerCore", BrokerCoreService, CORE_NS, False),
    "/admin": ("IBroker", BrokerAdminService, ADMIN_NS, True),
}
#: where the checked-in WSDLs point (``broker serve --write-wsdl``); a server writes its public URL
PLACEHOLDER_URL = "http://localhost:8080"
#: the WSDL file of each service in ``wsdl/``
WSDL_FILES = {"/broker": "broker-core.wsdl", "/admin": "broker-admin.wsdl"}
#: namespace prefixes spyne declares in every WSDL whether used or not
_UNUSED_CANDIDATES = ("wsdlsoap12", "soap12env", "soap12enc", "plink", "wsa", "xop", "http", "soap11enc", "xsi")


class BrokerApplication(Application):
    """A spyne Application that turns every exception of an operation into a stable SOAP fault."""

    #: the running service, set by :func:`build`; None while only building WSDLs
    api: ApiContext | None = None
    #: every operation needs the admin role (the admin service, core operations included)
    admin_only = False

    def call_wrapper(self, ctx: Any) -> Any:
        try:
            if self.admin_only:
                require_admin(caller(ctx.transport.req_env), ctx.descriptor.name)
            return super().call_wrapper(ctx)
        except Fault:
            raise
        except Exception as exc:  # the one place broker errors become faults
            spec = fault_for(exc)
            log_fault(spec, getattr(ctx.descriptor, "name", None) or "call", _who(ctx), exc)
            raise Fault(faultcode=spec.code, faultstring=spec.message,
                        detail=etree.fromstring(detail_xml(spec, self.tns))) from None


class BrokerWsgi(WsgiApplication):
    """spyne's WSGI application whose own faults (unknown operation, an argument that is not of its type) are
    turned into documented ones with the ``<BrokerFault>`` detail, like the operations' faults."""

    def handle_error(self, p_ctx: Any, others: Any, error: Any, start_response: Any) -> Any:
        if isinstance(error, Fault) and error.detail is None:
            spec = spyne_spec(str(error.faultcode), _spyne_message(p_ctx, error))
            error = Fault(faultcode=spec.code, faultstring=spec.message,
                          detail=etree.fromstring(detail_xml(spec, self.app.tns)))
            p_ctx.in_error = p_ctx.in_error and error
            p_ctx.out_error = error
        return super().handle_error(p_ctx, others, error, start_response)


def _spyne_message(ctx: Any, error: Any) -> str:
    """spyne's fault string, naming the operation and the argument where spyne's does not."""
    text = printable(str(error.faultstring))
    operation = etree.QName(ctx.method_request_string).localname if ctx.method_request_string else None
    if str(error.faultcode) == "Client.ResourceNotFound":
        return f"the service has no operation {operation or '?'}: see its WSDL"
    # spyne names the value ("Could not cast 'abc' to integer", "The value 2147483648 could not be
    # validated"), not the argument: the argument is the element holding that value
    quoted = re.search(r"'([^']*)'|[Vv]alue (\S+) could not", text)
    body = getattr(ctx, "in_body_doc", None)
    if quoted is None or body is None or operation is None:
        return text
    value = (quoted.group(1) if quoted.group(1) is not None else quoted.group(2)).strip("'")
    names = [etree.QName(e).localname for e in body.iter() if isinstance(e.tag, str) and len(e) == 0
             and (e.text or "").strip() == value]
    if not names:
        return text
    expected = _expected(ctx, names[0])
    return f"{operation}: invalid {names[0]} {value!r}" + (f": expected {expected}" if expected else f" ({text})")


def _expected(ctx: Any, name: str) -> str | None:
    """What an argument (or a field of one) must be, for the integer types the API uses."""
    kind = _field_type(ctx.descriptor.in_message, name, 4) if ctx.descriptor else None
    low = getattr(getattr(kind, "Attributes", None), "min_bound", None)
    high = getattr(getattr(kind, "Attributes", None), "max_bound", None)
    if low is None or high is None or getattr(kind, "__type_name__", None) not in ("int", "long"):
        return None
    return f"an xs:{kind.__type_name__}, an integer from {low} to {high}"


def _field_type(model: Any, name: str, depth: int) -> Any:
    """The type of the field ``name`` of a message or of the complex types in it (breadth first)."""
    fields = getattr(model, "_type_info", None) or {}
    if name in fields:
        return fields[name]
    for kind in fields.values() if depth else ():
        found = _field_type(kind, name, depth - 1)
        if found is not None:
            return found
    return None


def _who(ctx: Any) -> str:
    env = getattr(ctx.transport, "req_env", {}) or {}
    user, elf = env.get(USER_KEY), env.get(ELF_KEY)
    if user is not None:
        return f"user {user.name}"
    return f"elf session {elf.session_id}" if elf is not None else "?"


def build(api: ApiContext | None, public_url: str,
          max_request_bytes: int) -> dict[str, tuple[WsgiApplication, str, bytes]]:
    """path -> (spyne WSGI application, namespace, WSDL bytes) of both services."""
    # spyne runs a full gc.collect() in a request thread once a second (to close files of contexts, which
    # this API never opens): with a large engine in the process that stalls every call for tens of ms
    spyne_const.MIN_GC_INTERVAL = float("inf")
    built = {}
    for path, (name, service, namespace, admin_only) in SERVICES.items():
        # huge_tree: a description may be one text node above libxml2's 10 MB default; the edge caps the size
        app = BrokerApplication([service], tns=namespace, name=name, in_protocol=Soap11(validator="soft",
                                                                                      huge_tree=True),
                                out_protocol=Soap11())
        app.api = api
        app.admin_only = admin_only
        wsgi = BrokerWsgi(app, max_content_length=max_request_bytes + 1024)
        wsgi.doc.wsdl11.build_interface_document(public_url.rstrip("/") + path)
        built[path] = (wsgi, namespace, clean_wsdl(wsgi.doc.wsdl11.get_interface_document()))
    return built


def clean_wsdl(document: bytes) -> bytes:
    """The WSDL without the namespace declarations it never uses, pretty-printed."""
    root = etree.fromstring(document, etree.XMLParser(remove_blank_text=True, resolve_entities=False))
    values = {v for element in root.iter() for v in element.attrib.values()}
    used_uris = {etree.QName(e).namespace for e in root.iter() if isinstance(e.tag, str)}
    used_uris |= {etree.QName(a).namespace for e in root.iter() for a in e.attrib if "}" in a}
    keep = [prefix for prefix, uri in root.nsmap.items()
            if prefix and (prefix not in _UNUSED_CANDIDATES or uri in used_uris
                           or any(re.match(rf"{prefix}:[A-Za-z_]", v) for v in values))]
    etree.cleanup_namespaces(root, keep_ns_prefixes=keep)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


#: spyne loggers that log every client fault with a traceback and invalid requests in full
SPYNE_LOGGERS = ("spyne", "spyne.application", "spyne.application.client", "spyne.application.server",
                 "spyne.protocol", "spyne.server")


def quiet_spyne() -> None:
    """Keep spyne's own fault logging out of the log (the API logs each fault in one line itself).

    A logging configuration that sets a spyne logger to DEBUG keeps it: that is how the edge is diagnosed.
    """
    for name in SPYNE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level != logging.DEBUG:
            logger.setLevel(logging.CRITICAL)


def write_wsdls(directory: str) -> list[str]:
    """Write both WSDLs, pointing at :data:`PLACEHOLDER_URL`, into ``directory``; returns the paths."""
    from pathlib import Path

    quiet_spyne()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, (_, _, wsdl) in build(None, PLACEHOLDER_URL, 1024).items():
        target = out / WSDL_FILES[path]
        target.write_bytes(wsdl)
        written.append(str(target))
    return written
