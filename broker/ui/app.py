"""The dashboard's WSGI application: routes, login and logout, the CSRF check, static files, error pages.

Every page but the login form and the static files needs a session (a browser without one is sent to the
login form; a live feed answers 401). Every POST but the login carries the session's CSRF token in its form,
else it is refused with 403 before anything runs; GETs never change anything. Answers carry the security
headers of :mod:`broker.ui.web` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jinja2

from broker.api.passwords import Busy
from broker.errors import BrokerError, InvalidCredentials, NotFound
from broker.ui import actions, pages, web
from broker.ui.live import EventTails, LiveFeeds
from broker.ui.sessions import COOKIE, Sessions

log = logging.getLogger("broker.ui")

HERE = Path(__file__).resolve().parent
#: the files under /ui/static/ and their content types (nothing else is served from there)
STATIC = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
#: the cookie of the login form's own CSRF token
LOGIN_COOKIE = "broker_ui_login"
GID = r"(?P<gid>[A-Za-z0-9_-]{1,32})"
NID = r"(?P<nid>[0-9]{1,18})"


class Dashboard:
    """The ``/ui/`` application of ``broker serve``."""

    def __init__(self, api: Any, authenticate: Callable[[str, str], Any], health: Any, *, secure: bool = False,
                 sessions: Sessions | None = None):
        """``api``: the ApiContext; ``authenticate(name, password)``: the API's check (Verified or raises);
        ``secure``: the public URL is https (cookies get ``Secure``)."""
        self.api = api
        self.authenticate = authenticate
        self.health = health
        self.secure = secure
        self.sessions = sessions or Sessions()
        self.live = LiveFeeds()
        self.tails = EventTails()
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
        self._limits: dict[str, int | None] | None = None
        #: (method, path pattern, handler, needs a session)
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Iterable[bytes]], bool]] = [
            (method, re.compile(pattern + r"\Z"), handler, private) for method, pattern, handler, private in [
                ("GET", r"/ui/?", self._index, True),
                ("GET", r"/ui/login", self._login_form, False),
                ("POST", r"/ui/login", self._login, False),
                ("POST", r"/ui/logout", self._logout, True),
                ("GET", r"/ui/static/(?P<name>[a-z.]{1,20})", self._static, False),
                ("GET", r"/ui/workflows", self._page(pages.workflows), True),
                ("GET", r"/ui/workflows\.json", self._feed(pages.workflows_feed), True),
                ("GET", rf"/ui/workflows/{GID}", self._page(pages.workflow), True),
                ("GET", rf"/ui/workflows/{GID}/live", self._feed(pages.workflow_live), True),
                ("GET", rf"/ui/workflows/{GID}/descriptor", self._descriptor, True),
                ("GET", rf"/ui/workflows/{GID}/events", self._page(pages.events_page), True),
                ("GET", rf"/ui/workflows/{GID}/events.json", self._feed(pages.events_feed), True),
                ("GET", rf"/ui/nodes/{NID}", self._page(pages.node), True),
                ("GET", rf"/ui/nodes/{NID}/live", self._feed(pages.node_live), True),
                ("GET", r"/ui/confirm", self._confirm, True),
                ("POST", r"/ui/act", self._act, True),
                ("GET", r"/ui/submit", self._submit_form, True),
                ("POST", r"/ui/submit", self._submit, True),
                ("GET", r"/ui/admin", self._admin, True),
            ]]

    # ------------------------------------------------------------------------------------------ dispatch

    def __call__(self, environ: dict[str, Any], start_response: web.StartResponse) -> Iterable[bytes]:
        req = web.Request.of(environ)
        req.session = self.sessions.get(req.cookies.get(COOKIE))
        allowed = []
        for method, pattern, handler, private in self.routes:
            match = pattern.match(req.path)
            if match is None:
                continue
            allowed.append(method)
            if method != req.method and not (method == "GET" and req.method == "HEAD"):
                continue
            if private and req.session is None:  # never logged in, or the session ended (a form posted late too)
                if not req.path.endswith(("/live", ".json")):
                    query = req.environ.get("QUERY_STRING")
                    back = req.path + ("?" + query if query else "") if req.method == "GET" else "/ui/workflows"
                    return web.redirect(start_response, "/ui/login?" + urllib.parse.urlencode({"next": back}))
                return web.as_json(start_response, {"error": "not logged in"}, "401 Unauthorized")
            if req.method == "POST":
                req.read_form()
                if private and not req.session.csrf_ok(req.form.get("csrf")):
                    log.warning("dashboard: %s %s from %s refused: missing or wrong CSRF token", req.method,
                                req.path, environ.get("REMOTE_ADDR"))
                    return self._error(start_response, req, "403 Forbidden",
                                       "this form's security token is missing or out of date: reload the page "
                                       "and try again")
            try:
                return handler(start_response, req, **match.groupdict())
            except NotFound as exc:
                if req.path.endswith(("/live", ".json")):
                    return web.as_json(start_response, {"error": str(exc)}, "404 Not Found")
                return self._error(start_response, req, "404 Not Found", str(exc))
            except BrokerError as exc:
                return self._error(start_response, req, "409 Conflict", str(exc))
            except Exception:
                log.exception("dashboard: %s %s failed", req.method, req.path)
                return self._error(start_response, req, "500 Internal Server Error",
                                   "the page could not be made: the broker's log says why")
        if allowed:
            return web.respond(start_response, "405 Method Not Allowed", b"method not allowed\n",
                               "text/plain; charset=utf-8", [("Allow", ", ".join(sorted(set(allowed))))])
        return self._error(start_response, req, "404 Not Found", "no such page")

    def render(self, start_response: web.StartResponse, req: web.Request, template: str, values: dict[str, Any],
               status: str = "200 OK", headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
        text = self.env.get_template(template).render(
            user=req.user, csrf=req.session.csrf if req.session else "", **values)
        return web.html(start_response, text, status, headers)

    def _error(self, start_response: web.StartResponse, req: web.Request, status: str,
               message: str) -> Iterable[bytes]:
        return self.render(start_response, req, "error.html", {"status": status, "message": message}, status)

    def _page(self, view: Callable[..., tuple[str, dict[str, Any]]]) -> Callable[..., Iterable[bytes]]:
        def handler(start_response: web.StartResponse, req: web.Request, gid: str | None = None,
                    nid: str | None = None) -> Iterable[bytes]:
            args = [a for a in (gid, int(nid) if nid else None) if a is not None]
            template, values = view(self, req, *args)
            return self.render(start_response, req, template, values)
        return handler

    def _feed(self, view: Callable[..., dict[str, Any]]) -> Callable[..., Iterable[bytes]]:
        def handler(start_response: web.StartResponse, req: web.Request, gid: str | None = None,
                    nid: str | None = None) -> Iterable[bytes]:
            args = [a for a in (gid, int(nid) if nid else None) if a is not None]
            return web.as_json(start_response, view(self, req, *args))
        return handler

    # ----------------------------------------------------------------------------------- login, logout

    def _index(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        return web.redirect(start_response, "/ui/workflows")

    def _login_form(self, start_response: web.StartResponse, req: web.Request, error: str | None = None,
                    status: str = "200 OK") -> Iterable[bytes]:
        # login CSRF (another site logging the browser in as someone else): the form's token must equal a
        # cookie of its own, which another site can neither read nor set
        token = secrets.token_urlsafe(24)
        return self.render(start_response, req, "login.html", {
            "error": error, "next": _local(req.query.get("next") or req.form.get("next")),
            "name": (req.form.get("user") or "")[:32], "login_token": token}, status,
            [web.session_cookie(LOGIN_COOKIE, token, secure=self.secure, path="/ui/login")])

    def _login(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        name, password = req.form.get("user", "")[:64], req.form.get("password", "")[:2048]
        expected, given = req.cookies.get(LOGIN_COOKIE, ""), req.form.get("login_token", "")
        if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
            return self._login_form(start_response, req, "this login form is out of date: log in again",
                                    "403 Forbidden")
        try:
            user = self.authenticate(name, password)
        except InvalidCredentials:
            log.warning("dashboard: failed login as %r from %s", name, req.environ.get("REMOTE_ADDR"))
            return self._login_form(start_response, req, "wrong user name or password", "401 Unauthorized")
        except Busy as exc:
            return self._login_form(start_response, req, str(exc), "503 Service Unavailable")
        token = self.sessions.open(user)
        return web.redirect(start_response, _local(req.form.get("next")),
                            [web.session_cookie(COOKIE, token, secure=self.secure)])

    def _logout(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        self.sessions.close(req.cookies.get(COOKIE))
        return web.redirect(start_response, "/ui/login",
                            [web.session_cookie(COOKIE, "", secure=self.secure, max_age=0)])

    # --------------------------------------------------------------------------------- files, actions

    def _static(self, start_response: web.StartResponse, req: web.Request, name: str) -> Iterable[bytes]:
        if name not in self.static:
            return self._error(start_response, req, "404 Not Found", "no such file")
        return web.respond(start_response, "200 OK", self.static[name], STATIC[name])

    def _descriptor(self, start_response: web.StartResponse, req: web.Request, gid: str) -> Iterable[bytes]:
        filename, text = pages.descriptor(self, req, gid)
        return web.respond(start_response, "200 OK", text.encode("utf-8"), "application/octet-stream",
                           [("Content-Disposition", f'attachment; filename="{filename}"')])

    def _confirm(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        action, global_id = req.query.get("action", ""), req.query.get("target", "")[:1100]
        if action not in actions.ACTIONS:
            return self._error(start_response, req, "404 Not Found", "no such action")
        actions.target(self, req.user, global_id)  # NotFound before asking
        what = "node" if "/" in global_id else "workflow"
        return self.render(start_response, req, "confirm.html", {
            "action": action, "target": global_id, "what": what, "back": _local(req.query.get("back"))})

    def _act(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        action = req.form.get("action", "")
        if action not in actions.ACTIONS:
            return self._error(start_response, req, "404 Not Found", "no such action")
        actions.act(self, req.user, action, req.form.get("target", "")[:1100])
        return web.redirect(start_response, _local(req.form.get("back")))

    def _submit_form(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        return self.render(start_response, req, "submit.html", {"content": "", "problems": None, "error": None})

    def _submit(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        global_id, shown = actions.submit_form(self, req.user, req.form)
        if global_id is not None:
            return web.redirect(start_response, f"/ui/workflows/{global_id}")
        values = {"problems": None, "error": None, "lines": [], "bad_lines": {}, **shown}
        return self.render(start_response, req, "submit.html", values, "422 Unprocessable Content")

    def _admin(self, start_response: web.StartResponse, req: web.Request) -> Iterable[bytes]:
        if not req.user.admin:
            return self._error(start_response, req, "403 Forbidden", "the admin page needs the admin role")
        return self.render(start_response, req, "admin.html", actions.admin_page(self))

    def host_limits(self) -> dict[str, int | None]:
        """Host -> most jobs in flight there (None: no per-host limit), from the catalogue (read once)."""
        if self._limits is None:
            from broker.resources.catalogue import load_catalogue

            catalogue = load_catalogue(self.api.settings.hosts.catalogue, check_files=False)
            self._limits = {name: catalogue.max_jobs(name) or None for name in catalogue.names()}
        return self._limits


def _local(target: str | None) -> str:
    """A redirect target on this site's dashboard only (an open redirect would help phishing)."""
    if not target or not target.startswith("/ui/") or target.startswith("//") or "\\" in target \
            or any(ord(c) < 33 for c in target) or len(target) > 2000:
        return "/ui/workflows"
    return target
