"""``Client.local(db_url)``: the same client over an engine run in this process, for notebooks and scripts.

How: the engine starts here as ``broker serve`` would (it resumes the database's unfinished workflows and runs
every workflow), and the two SOAP applications of ``broker serve`` are built in-process; the client's zeep
calls them through a transport that hands each request to the application directly, without a socket. So
a local client behaves like a remote one, faults, authorization and paging included, and there is no
second implementation to drift.

Who: the caller is the broker user named by ``[engine] user``, else the login name (created in the database
if missing, as ``broker run`` does); no password, since whoever can open the database can do anything with
it. ``AdminClient.local`` acts as an admin. Payloads run as the account of this process.

Limits:

* One broker per database: while the client is open it holds the database (SQLite: an exclusive lock, for
  the whole process; PostgreSQL: the lease), so ``broker serve``, ``broker run`` or another ``Client.local``
  on the same database fail to start, and opening one while they run raises ConnectionFailed. Use a
  ``broker serve`` and ``Client(url, ...)`` to share a database.
* Workflows run only while the client is open. ``close()`` (or leaving the ``with`` block) stops the engine;
  payloads still running go on, and the next broker on the database (another ``Client.local``, ``broker
  resume`` or ``broker serve``) re-attaches to them.
* The engine's threads run in this process: a notebook kernel that is interrupted keeps them; restart the
  kernel or call ``close()``.
"""

from __future__ import annotations

import getpass
import io
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict
from zeep.transports import Transport

from broker.client import errors
from broker.client.connection import Connection
from broker.errors import BrokerError, ConfigError, DatabaseError

#: the address the in-process services answer at (never resolved: no request leaves the process)
LOCAL_URL = "http://broker.local.invalid"


class WsgiTransport(Transport):
    """A zeep transport that hands requests to in-process WSGI applications as the given user."""

    def __init__(self, routes: dict[str, tuple[Any, str, bytes]], identity: Any):
        super().__init__()
        self.routes = routes
        self.identity = identity

    def _route(self, url: str) -> tuple[Any, bytes]:
        path = requests.utils.urlparse(url).path
        if path not in self.routes:
            raise errors.ConnectionFailed(f"{url}: no such local service")
        app, _namespace, wsdl = self.routes[path]
        return app, wsdl

    def load(self, url: str) -> bytes:
        return self._route(url)[1]

    def post(self, address: str, message: bytes, headers: dict[str, str]) -> requests.Response:
        from broker.api.identity import USER_KEY

        app, _ = self._route(address)
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": requests.utils.urlparse(address).path, "QUERY_STRING": "",
            "SERVER_NAME": "localhost", "SERVER_PORT": "0", "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_TYPE": headers.get("Content-Type", "text/xml; charset=utf-8"),
            "CONTENT_LENGTH": str(len(message)), "HTTP_SOAPACTION": headers.get("SOAPAction", '""'),
            "wsgi.input": io.BytesIO(message), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            USER_KEY: self.identity,
        }
        answer: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer["status"], answer["headers"] = status, response_headers

        chunks = app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        response = requests.Response()
        response.status_code = int(answer["status"].split()[0])
        response.headers = CaseInsensitiveDict(answer["headers"])
        response._content = body
        response.url = address
        return response


def open_local(cls: type, db_url: str | None, *, config: Any = None, workdir: Any = None) -> Any:
    """A ``cls`` (Client or AdminClient) over an engine started in this process on ``db_url``."""
    from broker.api.app import build, quiet_spyne
    from broker.api.context import ApiContext
    from broker.api.passwords import Verified
    from broker.configload import load_settings
    from broker.engine import Engine
    from broker.persistence import repository

    admin = cls.PATH == "/admin"
    try:
        settings = load_settings(config)
        if db_url is not None:
            settings = settings.replace("database", url=db_url)
        # the caller's own run, as `broker run`: local payloads run as this process's account
        settings = settings.replace("engine", run_as_broker_account=True)
        name = _user_name(settings)
        engine = Engine(settings, all_workflows=True, workdir=workdir, service="client").start()
    except DatabaseError as exc:
        raise errors.ConnectionFailed(f"cannot open the database: {exc}") from None
    except ConfigError as exc:
        raise errors.InvalidArgument(str(exc)) from None
    try:
        engine.track_all()
        with engine.sessions.begin() as s:
            user_id = repository.ensure_user(s, name).id
        quiet_spyne()
        routes = build(ApiContext(settings, engine), LOCAL_URL, settings.api.max_request_bytes)
        identity = Verified(name=name, role="admin" if admin else "user", user_id=user_id)
        address = LOCAL_URL + cls.PATH
        connection = Connection(address + "?wsdl", address, WsgiTransport(routes, identity))
    except BrokerError as exc:
        engine.stop()
        raise errors.ClientError(f"cannot start the local broker: {exc}") from None
    except BaseException:
        engine.stop()
        raise
    return cls._over(connection, name, closer=engine.stop)


def _user_name(settings: Any) -> str:
    """``[engine] user``, else the login name (checked by the users table when it is created)."""
    try:
        return settings.engine.user or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        raise ConfigError("cannot tell who you are: set [engine] user or BROKER_ENGINE_USER") from None

