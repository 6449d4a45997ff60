"""The protocol wing: how bytes from a client become lines for the app, and replies go back in order.

- ``framing``: what every framer is (``Framer``, ``Batch``) and the early replies they owe; sans-IO.
- ``lines``: the LF line framer, with line ids (the first framer).
- ``syslog``: the octet-count and syslog framers (RFC 6587 octet counting; counted or LF/NUL per message).
- ``framers``: the framings a listener may use (``server.framing``) and the ack mode each implies.
- ``rejects``: the rate-limited log of frames refused with no reply (``server.ack = off``).
- ``replies``: replies in line order (the queue, futures, backpressure, the writer greenlet).
- ``connection``: one client's connection, tying a framer, the app and the replies; graceful stop, linger,
  and handing the connection to the next generation at a reload (``prefork.handoff``).
- ``counters``: the worker-wide figures (``prefork status``).
- ``proxy``: the PROXY protocol header a balancer may put before a client's bytes.
- ``allow``: ``server.allow_from``, the networks a listener takes connections from (the config's side).
- ``door``: the worker's check of it as it accepts (counted, logged through ``rejects``).
"""
