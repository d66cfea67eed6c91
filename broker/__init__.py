"""The workflow broker: runs XML-described workflows (DAGs of script payloads) on compute resources.

The data path runs one way, and the package tree follows it::

    description/  parse, validate and model an XML workflow description; count and expand its sweeps
    controllers/  submission, staging and monitoring actors
    workers/      threaded worker actors: stage, launch, poll, cancel, and expand (a sweep into its members
                  once it is ready, from static values or upstream outputs)
    launchers/    local process, SSH, SLURM, PBS/Torque, MOAB
    resources/    the host catalogue, accounts, SSH connection pool and one launcher per host
    elf/          the compute-side launcher that runs a payload and reports back
    persistence/  SQLAlchemy models, the writer and repository (the only writers of state), migrations
    events/       event types and documents, the outbox relay to STOMP
    api/          the SOAP API of ``broker serve`` (spyne: core at /broker, admin at /admin; elf push channel)
    ui/           the web dashboard of ``broker serve`` at /ui/: workflows, graphs, nodes, events, actions
    admin/        archive and delete finished workflows, service state (shared by the CLI and the API)
    cli/          the ``broker`` command
    client/       the Python client: ``Client`` over the SOAP API (zeep), or ``Client.local`` in-process

``engine.py`` starts and stops the actors in dependency order; ``states.py`` and ``rules.py`` hold the state
machine and the pure decisions; ``config.py`` the settings.
"""

__version__ = "0.1.0"
