"""The web dashboard of ``broker serve`` under ``/ui/``: server-rendered pages, a little script of our own.

Layout::

    sessions    login sessions (in memory) and their CSRF tokens
    web         requests and answers: cookies, forms (urlencoded and multipart), security headers
    queries     what the pages read: workflow lists (filters, keyset paging), a workflow's graph, a node
    graph       the layered layout of a workflow's top-level nodes (pure)
    pages       one function per page or live feed
    live        the live feeds' answers, computed once a second per workflow for every dashboard
    actions     cancel, restart, submit, the admin page
    app         the WSGI application: routing, login, CSRF, static files

Everything a page shows comes through Jinja2 with autoescaping, or through the script's ``textContent``;
the Content-Security-Policy allows scripts and styles from ``/ui/static/`` only (no inline ones). Live
updates are polled (at most every 2 s, with ``fetch``) from small JSON feeds whose answers every dashboard
following the same workflow shares (one read per workflow per second at most): an open dashboard never holds
a request thread between two polls.
"""
