"""Crash recovery: ``broker run`` killed with SIGKILL mid-run, then run again, on SQLite and PostgreSQL."""
