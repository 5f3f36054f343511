"""The app's worker formula, in one place for every role that needs it.

roles/app sizes Gunicorn with it on each app host, and roles/stack applies it to every
app host's own facts and inventory values to size PgBouncer's client budget: a Jinja
expression can only be evaluated with the variables of the host at hand, a filter can be
given another host's.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def stack_app_workers(vcpus: object, per_core: object) -> int:
    """Gunicorn workers for a host: vCPUs x workers per core, at least one."""
    try:
        return max(int(int(vcpus) * float(per_core)), 1)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(
            f"app_vcpus ({vcpus!r}) must be an integer and app_workers_per_core ({per_core!r}) "
            "a number: they size the app's workers."
        ) from exc


class FilterModule:
    def filters(self) -> dict:
        return {"stack_app_workers": stack_app_workers}
