"""redis-cli for the redis scenario's tests, over TLS, with passwords kept off command lines.

Redis serves only TLS (redis_tls_enabled): every call speaks TLS and verifies the server
with the stack CA's certificate unless told otherwise. A password reaches redis-cli through
REDISCLI_AUTH, read from a root-only environment file on the host that `login_file` writes
through `docker exec -i` from standard input: it never appears on a command line there
(ps, the journal) or here.
"""

import shlex
import subprocess

CA = "/etc/ssl/stack/ca.crt"
# Trusted by every Debian host, but not the stack CA: a client that does not trust it.
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
PORT = 6379


def login_file(host_name: str, name: str, password: str) -> str:
    """Write REDISCLI_AUTH=password into /root/redis-<name>.env (mode 600) on a scenario
    host (its container has the inventory name) and return the path."""
    path = f"/root/redis-{name}.env"
    subprocess.run(
        ["docker", "exec", "-i", host_name, "sh", "-c", f"umask 077 && cat > {path}"],
        input=f"REDISCLI_AUTH={shlex.quote(password)}\n",
        text=True,
        check=True,
    )
    return path


def cli(host, *args, login=None, target="127.0.0.1", stdin=None, tls=CA):
    """redis-cli on `host` against `target`. `login`: (user, login file) or None. `tls`: the
    CA file that verifies the server, or None for a cleartext connection."""
    parts = []
    if login:
        user, path = login
        parts += [f"set -a && . {path} && set +a &&"]
    parts += ["timeout 10 redis-cli --no-auth-warning"]
    if tls:
        parts += [f"--tls --cacert {tls}"]
    parts += [f"-h {target} -p {PORT}"]
    if login:
        parts += [f"--user {shlex.quote(user)}"]
    parts += [shlex.quote(arg) for arg in args]
    line = " ".join(parts)
    if stdin is not None:
        line = f"{stdin} | ({line})"
    return host.run(line)
