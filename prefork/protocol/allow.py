"""``server.allow_from``: the networks a listener takes connections from.

The config side only (the master imports it): the value of one listener, ``AllowList``, and the parser of
the key. The check itself runs in the worker as it accepts (prefork.protocol.door).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefork.protocol.proxy import Networks, allowed, parse_networks

ANY = "any"


@dataclass(frozen=True)
class AllowList:
    """The networks one listener takes connections from; none: everyone."""

    networks: Networks = ()

    @property
    def everyone(self) -> bool:
        return not self.networks

    def admits(self, peer: str) -> bool:
        """Whether a peer's IP address may connect (an IPv4-mapped IPv6 address counts as IPv4)."""
        return self.everyone or allowed(peer, self.networks)

    def __str__(self) -> str:
        # As it is written in the config: what `prefork config` shows.
        return " ".join(str(network) for network in self.networks) or ANY


EVERYONE = AllowList()


def parse_allow_from(text: str) -> tuple[AllowList, ...]:
    """One list for all listeners, or one per server.bind address, comma separated; the networks of one
    listener separated by spaces (a comma already separates listeners); empty or ``any``: everyone."""
    lists = []
    for part in text.split(","):
        words = part.split()
        if not words or [word.lower() for word in words] == [ANY]:
            lists.append(EVERYONE)
            continue
        if any(word.lower() == ANY for word in words):
            raise ValueError("'any' stands alone in a listener's list (it means everyone)")
        lists.append(AllowList(parse_networks(part, separator=None)))
    return tuple(lists)
