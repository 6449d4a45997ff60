"""The worker-wide figures of the protocol, shown by ``prefork status``."""

from __future__ import annotations


class Counters:
    """Worker-wide figures shown by ``prefork status``."""

    __slots__ = (
        "clients",
        "lines_in",
        "ok",
        "err",
        "err_by_reason",
        "next_client_id",
        "unread_clients",
        "handoffs",
        "refused",
        "tls",
    )

    def __init__(self) -> None:
        self.clients = 0
        self.lines_in = 0
        self.ok = 0
        self.err = 0
        self.err_by_reason: dict[str, int] = {}  # "too-long", "unavailable", ...
        self.next_client_id = 0
        self.unread_clients = 0  # connections whose reader stopped because the client read no replies
        # Connections moved at a reload (prefork.handoff): "out" handed to the new generation, "fallback" not
        # (closed here as at any graceful stop), "in" adopted from the old one.
        self.handoffs = {"out": 0, "fallback": 0, "in": 0}
        # TLS listeners (prefork.protocol.tlsaccept): "handshakes" completed, "failed:REASON" handshakes that
        # failed, "wrong:plaintext" plaintext on a TLS listener, "wrong:tls" a ClientHello on a plaintext one.
        self.tls: dict[str, int] = {}
        # Connections closed as they came, by reason: "allow_from" (outside server.allow_from; prefork.protocol.door).
        self.refused = {"allow_from": 0}
