"""Who the client is: the peer address, or what trusted proxies say in X-Forwarded-For."""

from __future__ import annotations

import ipaddress

from starlette.types import Scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, networks: list[str]) -> None:
        self.networks: list[IPNetwork] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def client_address(self, scope: Scope) -> str:
        """Walk X-Forwarded-For from the right past trusted hops, as nginx's real_ip_recursive does.

        Entries left of the first untrusted hop were written by the client itself and prove nothing,
        so a client cannot pick its own rate-limit bucket by sending the header.
        """
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        if not self.networks or not self.trusts(address):
            return address
        hops: list[str] = []
        for key, value in scope.get("headers", ()):
            if key == b"x-forwarded-for":
                hops.extend(part.strip() for part in bytes(value).decode("latin-1").split(","))
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return address  # junk: the last trusted hop is all we know
            if not self.trusts(hop):
                return hop
            address = hop
        return address
