"""Virtual addresses for names (tor's AutomapHostsOnResolve; addressmap.c).

When a DNSPort (or SOCKS RESOLVE) asks for a name ending in one of AutomapHostsSuffixes, the answer is an
unused address from VirtualAddrNetworkIPv4 (or IPv6) that stands for the name: an application that then connects
to that address is connected, through Tor, to the name. The exit never sees the virtual address.
"""

from __future__ import annotations

import ipaddress
import random

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# tor(1): the defaults of AutomapHostsSuffixes, VirtualAddrNetworkIPv4 and VirtualAddrNetworkIPv6.
DEFAULT_AUTOMAP_SUFFIXES = (".exit", ".onion")
DEFAULT_VIRTUAL_NETWORK_IPV4 = "127.192.0.0/10"
DEFAULT_VIRTUAL_NETWORK_IPV6 = "fe80::/10"
# addressmap.c get_random_virtual_addr: IPv4 addresses ending in .0 or .255 are never handed out.
_AVOIDED_LAST_OCTETS = (0, 255)
# How many random picks before the network is called full.
_MAX_TRIES = 1000


class AddressMapFull(RuntimeError):
    """No virtual address is left in the configured network."""


class AddressMap:
    """The virtual addresses handed out and the names they stand for (kept for the life of the process)."""

    def __init__(self, *, automap: bool = False, suffixes: tuple[str, ...] = DEFAULT_AUTOMAP_SUFFIXES,
                 ipv4_network: str = DEFAULT_VIRTUAL_NETWORK_IPV4, ipv6_network: str = DEFAULT_VIRTUAL_NETWORK_IPV6,
                 rng: random.Random | None = None) -> None:
        self.automap = automap
        self.suffixes = tuple(suffix.lower() for suffix in suffixes)
        self.networks = {4: ipaddress.IPv4Network(ipv4_network, strict=False),
                         6: ipaddress.IPv6Network(ipv6_network, strict=False)}
        self._rng = rng or random.SystemRandom()
        self._names: dict[IPAddress, str] = {}
        self._addresses: dict[tuple[str, int], IPAddress] = {}

    def should_automap(self, name: str) -> bool:
        """addressmap_address_should_automap: AutomapHostsOnResolve is on and `name` ends with a suffix ("." is
        every name)."""
        lowered = name.lower().rstrip(".")
        return self.automap and any(suffix == "." or lowered.endswith(suffix) for suffix in self.suffixes)

    def virtual_address(self, name: str, version: int = 4) -> IPAddress:
        """The virtual address of IP `version` standing for `name`: the one it already has, or a new one."""
        key = (name.lower().rstrip("."), version)
        known = self._addresses.get(key)
        if known is not None:
            return known
        network = self.networks[version]
        for _ in range(_MAX_TRIES):
            candidate = network[self._rng.randrange(network.num_addresses)]
            if version == 4 and candidate.packed[-1] in _AVOIDED_LAST_OCTETS:
                continue
            if candidate not in self._names:
                self._names[candidate] = key[0]
                self._addresses[key] = candidate
                return candidate
        raise AddressMapFull(f"no free virtual address left in {network}")

    def name_of(self, address: str | IPAddress) -> str | None:
        """The name a virtual address stands for, or None (not an address, or not one handed out)."""
        try:
            return self._names.get(ipaddress.ip_address(address))
        except ValueError:
            return None
