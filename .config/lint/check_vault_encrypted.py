#!/usr/bin/env python3
"""Refuse a plaintext vault file outside the local environment (`make lint` runs it).

Secrets live in `vault_`-prefixed variables in `inventories/<env>/group_vars/*/vault.yml`
(or host_vars). Only `inventories/local/` may keep that file in clear text: its values
are development values for containers on one machine. Anywhere else the file must be
encrypted with ansible-vault, so that committing it never publishes a secret.

A vault file is one named `vault.yml`/`vault.yaml`, or any file under a `vault/`
directory of group_vars or host_vars. Example files (`*.example`) are templates without
secrets and are not checked. Files git ignores are not checked either: they cannot be
committed by mistake.

Usage: check_vault_encrypted.py [ROOT]   (ROOT: the repository, default the current dir)
Exit status 1 lists each plaintext vault file.
"""

import subprocess
import sys
from pathlib import Path

VAULT_HEADER = b"$ANSIBLE_VAULT;"
VAULT_NAMES = {"vault.yml", "vault.yaml"}
VARS_DIRS = {"group_vars", "host_vars"}
LOCAL = Path("inventories/local")


def is_vault_file(rel: Path) -> bool:
    if rel.suffix == ".example":
        return False
    if rel.name in VAULT_NAMES:
        return True
    parts = rel.parts
    # group_vars/<group>/vault/<anything> or host_vars/<host>/vault/<anything>
    return any(
        parts[i] in VARS_DIRS and "vault" in parts[i + 2 : -1] for i in range(len(parts) - 2)
    )


def candidate_files(root: Path) -> list[Path]:
    """Tracked files plus untracked ones git does not ignore, relative to root."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
        ).stdout
        return [Path(p) for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (an unpacked tarball): look at everything.
        return [p.relative_to(root) for p in root.rglob("*") if p.is_file()]


def plaintext_vault_files(root: Path) -> list[Path]:
    found = []
    for rel in candidate_files(root):
        if not is_vault_file(rel) or rel.is_relative_to(LOCAL):
            continue
        path = root / rel
        if not path.is_file():  # deleted in the work tree, still in the index
            continue
        with path.open("rb") as handle:
            if handle.read(len(VAULT_HEADER)) != VAULT_HEADER:
                found.append(rel)
    return sorted(found)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path.cwd()
    found = plaintext_vault_files(root)
    for rel in found:
        print(
            f"{rel}: a vault file outside inventories/local must be encrypted: "
            f"ansible-vault encrypt {rel}",
            file=sys.stderr,
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
