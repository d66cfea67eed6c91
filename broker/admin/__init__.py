"""Administration: archive and delete finished workflows, and read the service's state and users.

Shared by the command line (``broker admin``) and the SOAP API (``archiveWorkflowsTo``, ``delete*``)::

    selection   the <archive> selection document (schemas/archive.xsd), hardened parsing, validation
    record      one workflow's archive: its document (schemas/archive-record.xsd) and its output bundle
    targets     where archives are written atomically: file:// under [archive] roots, sftp:// to a catalogue host
    reader      reading archives back: list, read and verify, take a file out of a bundle
    archive     the archive run: select, write each archive, delete once it is complete and synced
    delete      the deletion rules and the deletion of rows and work directories (with a crash journal)
    audit       ADMIN_ACTION events and the writer: the running broker's, or a store of its own under the lock
    state       the service state and users, through the API's own queries

Concurrency with a running broker: while a broker runs (``broker serve`` or ``broker run``: it holds the
database lock), it alone writes events, through its writer, so event ids keep increasing in commit order.
The API's archive and delete operations run inside that broker and delete and record through its writer. The
command line's changing commands (``broker admin archive --to``, ``broker admin delete``) take the broker lock
for their whole run and commit through a store of their own (the writer while no broker runs); when a broker already holds the lock they refuse, with
a message pointing to the API (or to stopping the broker). Reading commands (``state``, ``users``,
``archive --list/--show``, ``delete --dry-run``) work either way.
"""
