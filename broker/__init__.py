"""The workflow broker: runs XML-described workflows (DAGs of script payloads) on compute resources.

The data path runs one way, and the package tree follows it::

    description/  parse, validate and model an XML workflow description
    controllers/  submission, staging and monitoring actors
    workers/      threaded worker actors (stage, launch, poll, cancel)
    launchers/    local process, SSH, SLURM, PBS
    elf/          the compute-side launcher that runs a payload and reports back
    persistence/  SQLAlchemy models, the repository (the only writer of state), migrations
    events/       event types, the outbox relay to STOMP
    soap/         the SOAP API (spyne)
    cli/          the ``broker`` command
"""

__version__ = "0.1.0"
