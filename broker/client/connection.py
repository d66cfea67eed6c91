"""One SOAP endpoint through zeep: the WSDL loaded once, calls serialized, every failure turned into a ClientError.

zeep and requests stay inside this module: what leaves it are plain values and :mod:`broker.client.errors`.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from broker.client import errors


class Connection:
    """The service at ``address`` described by the WSDL at ``wsdl``, called through ``transport``.

    Thread-safe: calls are serialized by a lock (requests does not promise that one Session may be used by
    several threads at once); a program that wants calls in parallel opens one client per thread.
    """

    def __init__(self, wsdl: str, address: str, transport: Any):
        self.wsdl = wsdl
        self.address = address
        self.transport = transport
        self._service: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        import zeep

        with warnings.catch_warnings():  # zeep warns about the WSDL's unused SOAP 1.2 leftovers of spyne
            warnings.simplefilter("ignore")
            client = zeep.Client(self.wsdl, transport=self.transport, settings=zeep.Settings(xml_huge_tree=True))
        binding = next(iter(client.wsdl.bindings))
        # the address the caller gave, not the WSDL's (the broker's [api] public_url may name another host)
        self._client = client
        return client.create_service(binding, self.address)

    def call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        """The answer of one operation; raises a ClientError for a fault or a failed transport."""
        import requests
        import zeep.exceptions

        with self._lock:
            try:
                if self._service is None:
                    self._service = self._load()
                return getattr(self._service, operation)(*args, **kwargs)
            except zeep.exceptions.Fault as fault:
                raise fault_error(fault) from None
            except zeep.exceptions.TransportError as exc:
                if exc.status_code == 401:
                    raise errors.InvalidCredentials("the broker refused the user name or password",
                                                    code="Client.InvalidCredentials") from None
                raise errors.ConnectionFailed(f"{self.address}: HTTP {exc.status_code} without a SOAP answer") \
                    from None
            except zeep.exceptions.ValidationError as exc:  # refused by zeep before sending (e.g. int range)
                raise errors.InvalidArgument(f"{operation}: {exc}") from None
            except requests.RequestException as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status == 401:  # the WSDL's GET, refused
                    raise errors.InvalidCredentials("the broker refused the user name or password",
                                                    code="Client.InvalidCredentials") from None
                raise errors.ConnectionFailed(f"{self.address}: cannot reach the broker: {type(exc).__name__}") \
                    from None
            except zeep.exceptions.Error as exc:
                raise errors.ConnectionFailed(f"{self.address}: the answer is not the broker's SOAP: {exc}") \
                    from None

    def close(self) -> None:
        session = getattr(self.transport, "session", None)
        if session is not None:
            session.close()


def fault_error(fault: Any) -> errors.ClientError:
    """The ClientError for a zeep Fault: its code, and the problems of its ``<BrokerFault>`` detail."""
    problems: tuple[str, ...] = ()
    code = str(fault.code) if fault.code is not None else None
    detail = fault.detail
    if detail is not None:
        found = detail if _local(detail.tag) == "BrokerFault" else next(
            (e for e in detail.iter() if isinstance(e.tag, str) and _local(e.tag) == "BrokerFault"), None)
        if found is not None:
            for child in found:
                if not isinstance(child.tag, str):
                    continue
                if _local(child.tag) == "code" and child.text:
                    code = child.text
                elif _local(child.tag) == "problem":
                    problems += (child.text or "",)
    return errors.fault_error(code, str(fault.message or ""), problems)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]
