"""The elf: the compute-side script that runs one payload attempt and records its status and reports.

``broker/elf/elf.py`` is a single standard-library module for Python 3.8+: the broker imports it for the
report protocol and the status file, and ships it to remote hosts, where it runs as ``python3 elf.py run``.
``broker/elf/agent.py`` is the resident agent: one per host and account, it runs payloads without a wrapper
or an elf each (``[hosts] local_agent``, ``[hosts] ssh_agent``), keeping the same files.
"""

import os

#: path of the elf script, to copy to a remote host
ELF_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "elf.py")
