"""The protocol wing: how bytes from a client become lines for the app, and replies go back in order.

- ``connection``: one client's connection (reading, app dispatch, graceful stop, linger).
- ``proxy``: the PROXY protocol header a balancer may put before a client's bytes.
"""
