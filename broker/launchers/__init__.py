"""Launchers: where payloads run (local processes, SSH hosts, batch schedulers), behind one interface."""
