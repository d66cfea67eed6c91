"""Worker actors: threaded actors that do the blocking work (expand, launch, stage, poll, cancel)."""
