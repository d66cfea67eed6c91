"""The three controller actors: submission (scheduling), staging and monitoring."""
