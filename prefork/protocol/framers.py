"""The framings a listener may use (``server.framing``) and the ack mode each implies (``server.ack``).

Sans-IO and free of gevent: the config (in the master) names the framings from here, and a worker's
connection asks ``make_framer`` for the framer of its listener.
"""

from __future__ import annotations

from prefork.protocol.framing import Framer
from prefork.protocol.lines import LineFramer
from prefork.protocol.relp import RelpSession
from prefork.protocol.syslog import SyslogFramer

FRAMINGS = ("lines", "octet-count", "syslog", "relp")
ACK_MODES = ("on", "off", "auto")
# auto: replies where the clients read them. Syslog shippers read nothing: replies they leave unread fill
# the socket's buffers and stall them (README "Framings and acks").
# RELP's acks are its own rsp frames, whatever server.ack says.
AUTO_ACK = {"lines": True, "octet-count": False, "syslog": False, "relp": True}


def acks(framing: str, mode: str) -> bool:
    """Whether a listener with this framing and ``server.ack`` mode (on, off, auto) sends replies."""
    if mode == "auto":
        return AUTO_ACK.get(framing, True)
    return mode == "on"


def make_framer(framing: str, max_line: int, line_ids: bool = False) -> Framer:
    """A new framer for one connection of a listener with this framing (line ids: the lines framing's, and
    RELP's ids from each message's hash)."""
    if framing == "lines":
        return LineFramer(max_line, line_ids)
    if framing == "octet-count":
        return SyslogFramer(max_line, mixed=False)
    if framing == "syslog":
        return SyslogFramer(max_line, mixed=True)
    if framing == "relp":
        return RelpSession(max_line, line_ids)
    raise ValueError(f"unknown framing {framing!r}")
