"""``workers.echo:app``: answers each line with the line itself; touches no database.

For measuring the framework alone, and as the smallest example of a line application.
"""

from __future__ import annotations

from prefork.interface import Peer


class EchoApp:
    """Reply to every line with the same line."""

    def handle(self, line: str, client: Peer) -> str:
        """Return the line as its own reply."""
        return line

    def handle_lines(self, lines: list[str], client: Peer) -> list[str]:
        """All the lines of one read at once: each is its own reply."""
        return lines


app = EchoApp()
