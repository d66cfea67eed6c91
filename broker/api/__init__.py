"""The SOAP API of ``broker serve``: two spyne applications (core at ``/broker``, admin at ``/admin``).

Layout (only ``app``, ``types``, ``core``, ``admin`` and ``server`` import spyne)::

    passwords   salted slow password hashes and the short-lived cache of verified credentials
    identity    who is calling (a user with a role, or an elf session), decided at the edge
    edge        WSGI middleware: size cap, content type, DOCTYPE and malformed envelopes, authentication
    types       spyne wire types (never ORM models)
    core, admin the two services (IBrokerCore, IBroker); authorisation is checked in each operation
    app         the two applications, the one place broker errors become SOAP faults, the WSDLs
    intake      reading HTTP requests from bytes as they arrive (pure logic)
    httpd       the HTTP/1.1 server: one intake thread reads whole requests (deadlines, per-address cap,
                memory budget) before a request thread runs the edge on them
    answer      one request's WSGI environ, the application call and its answer written with a deadline
    front       in front of the edge: ``/health``, ``/metrics`` (admins, or ``[api] metrics_listen``), the
                calls' figures, 503 while starting
    health      the service state ``/health`` answers (starting, active, standby, api, stopping)
    metrics     the Prometheus registry of a server: figures read at scrape time, API call histograms
    addresses   ``[api] listen`` parsed, hosts as URLs show them, a WSDL's operations
    apionly     ``[api] processes = N``: API-only processes beside the broker, forwarding changes to it
    rows, remote  ``[api] writes = rows``: an API process without an engine (any machine), changes as
                request rows the active broker applies
    server      start-up and the SIGTERM drain of ``broker serve`` (which also serves the dashboard, broker.ui)

Elf sessions (per node attempt an id and a secret for the push channel) are rows of
:mod:`broker.persistence.elfsessions`, which the launch worker creates; the XML of getWorkflowAsXml /
getNodeAsXml is :mod:`broker.statexml`, shared with the admin archive records.
"""
