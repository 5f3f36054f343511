"""Address helpers for the nginx role, with Python's own ipaddress module.

ansible.utils' ipaddr filters would need that collection and netaddr on every control
node; a CIDR check needs neither.
"""

from __future__ import annotations

import ipaddress


def nginx_invalid_cidrs(values: object) -> list[str]:
    """The entries of a list that are not an IPv4 or IPv6 network in CIDR notation.

    A bare address counts as its own network (/32 or /128). Host bits set under the
    prefix (10.0.0.5/24) are refused: nginx's geo would drop them with a warning, and the
    entry would then stand for a wider range than it reads.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        return [str(values)]
    invalid = []
    for value in values:
        try:
            ipaddress.ip_network(str(value), strict=True)
        except ValueError:
            invalid.append(str(value))
    return invalid


def nginx_private_addresses(hosts: list) -> list[str]:
    """Each host's private address (the hostvars of each): common_address when the
    inventory sets it, else the address of its default route from facts; hosts whose
    facts are not gathered are left out."""
    found = []
    for host in hosts:
        address = host.get("common_address") or (
            host.get("ansible_facts", {}).get("default_ipv4", {}).get("address")
        )
        if address:
            found.append(str(address))
    return found


class FilterModule:
    def filters(self) -> dict:
        return {
            "nginx_invalid_cidrs": nginx_invalid_cidrs,
            "nginx_private_addresses": nginx_private_addresses,
        }
