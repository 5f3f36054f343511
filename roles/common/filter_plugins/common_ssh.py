"""Address checks for the common role's firewall and SSH preflight.

Python's own ipaddress module: ansible.utils' ipaddr filters would need that collection
and netaddr on every control node.
"""

from __future__ import annotations

import ipaddress


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        return None


def common_invalid_cidrs(values: object) -> list[str]:
    """The entries of a list that are not an IPv4 or IPv6 address or network."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        return [str(values)]
    return [str(value) for value in values if _network(value) is None]


def common_open_to_all(values: object) -> list[str]:
    """The entries of a list of CIDRs that stand for every address (0.0.0.0/0, ::/0)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        return []
    return [str(value) for value in values if (net := _network(value)) and net.prefixlen == 0]


def common_address_in(address: object, values: object) -> bool:
    """Whether an address (an IPv4-mapped IPv6 one counts as IPv4) is in any of the CIDRs."""
    try:
        ip = ipaddress.ip_address(str(address).strip().split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        return False
    return any((net := _network(value)) and ip in net for value in values)


class FilterModule:
    def filters(self) -> dict:
        return {
            "common_invalid_cidrs": common_invalid_cidrs,
            "common_open_to_all": common_open_to_all,
            "common_address_in": common_address_in,
        }
