"""The broker's XML schemas (``schemas/*.xsd``): where they are installed, each compiled once, and
validation that is safe from several threads.

An lxml ``XMLSchema`` keeps the error log of its last validation on the schema object: two threads
validating with one schema at once would read each other's errors. :meth:`Xsd.errors` therefore validates
and reads the log under the schema's own lock. Schemas are parsed without entities, DTDs or network.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

from lxml import etree

from broker.errors import Problem

#: the file whose presence marks the schema directory
MARKER_FILE = "workflow.xsd"


def schema_dir() -> Path:
    """The directory holding the schemas: the one place that knows where they are installed.

    Looked up in order: ``broker/schemas/`` inside the package (a wheel may ship it there as package
    data); ``<repository>/schemas/`` (a checkout or an editable install);
    ``<prefix>/share/workflow-broker/schemas/`` (wheel data files).
    """
    package = Path(__file__).resolve().parent.parent
    candidates = [package / "schemas", package.parent / "schemas",
                  Path(sys.prefix) / "share" / "workflow-broker" / "schemas"]
    for candidate in candidates:
        if (candidate / MARKER_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{MARKER_FILE} not found in any of: " + ", ".join(str(c) for c in candidates))


class Xsd:
    """One schema of the schema directory, compiled on first use, and its root element."""

    def __init__(self, file_name: str, namespace: str, root: str):
        self.file_name = file_name
        self.namespace = namespace
        #: the local name the root element of a valid document has
        self.root = root
        self._noise = re.compile(re.escape(f"{{{namespace}}}"))
        self._lock = threading.Lock()
        self._schema: etree.XMLSchema | None = None

    def path(self) -> Path:
        """Where the schema file is."""
        return schema_dir() / self.file_name

    def schema(self) -> etree.XMLSchema:
        """The compiled schema, the same object for the life of the process."""
        with self._lock:
            if self._schema is None:
                parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True)
                self._schema = etree.XMLSchema(etree.parse(str(self.path()), parser))
            return self._schema

    def root_problem(self, tree: etree._ElementTree, filename: str) -> Problem | None:
        """The problem of a document whose root element is not this schema's (None when it is)."""
        root = tree.getroot()
        if root.tag == f"{{{self.namespace}}}{self.root}":
            return None
        name = etree.QName(root)
        found = f"<{name.localname}>" + (f" in namespace '{name.namespace}'" if name.namespace else
                                        " without a namespace")
        return Problem(filename, root.sourceline or 1, 0,
                       f"the root element must be <{self.root}> in namespace '{self.namespace}', not {found}")

    def errors(self, tree: etree._ElementTree | etree._Element,
               most: int | None = None) -> tuple[list[etree._LogEntry], int]:
        """The first ``most`` (all: None) errors of validating ``tree``, and how many there were."""
        schema = self.schema()
        with self._lock:
            if schema.validate(tree):
                return [], 0
            log = schema.error_log
            total = len(log)
            return [log[i] for i in range(total if most is None else min(total, most))], total

    def plain(self, message: str) -> str:
        """An lxml message without this schema's ``{namespace}`` before every element name."""
        return self._noise.sub("", message)


__all__ = ["Xsd", "schema_dir"]
