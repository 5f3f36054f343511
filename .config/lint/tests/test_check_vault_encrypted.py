"""`make lint` refuses a plaintext vault file outside inventories/local."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "check_vault_encrypted", Path(__file__).resolve().parents[1] / "check_vault_encrypted.py"
)
check = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(check)

ENCRYPTED = "$ANSIBLE_VAULT;1.1;AES256\n6162636465\n"
PLAIN = "vault_db_app_password: hunter2-hunter2\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_plaintext_vault_in_production_is_refused(repo: Path, capsys) -> None:
    write(repo, "inventories/production/group_vars/all/vault.yml", PLAIN)
    assert check.main(["x", str(repo)]) == 1
    assert "ansible-vault encrypt inventories/production/group_vars/all/vault.yml" in (
        capsys.readouterr().err
    )


def test_plaintext_vault_directory_file_in_host_vars_is_refused(repo: Path) -> None:
    write(repo, "inventories/staging/host_vars/db1/vault/secrets.yml", PLAIN)
    assert check.plaintext_vault_files(repo) == [
        Path("inventories/staging/host_vars/db1/vault/secrets.yml")
    ]


def test_encrypted_vault_and_local_plaintext_pass(repo: Path) -> None:
    write(repo, "inventories/production/group_vars/all/vault.yml", ENCRYPTED)
    write(repo, "inventories/local/group_vars/all/vault.yml", PLAIN)
    write(repo, "inventories/staging/group_vars/all/vault.yml.example", PLAIN)
    assert check.main(["x", str(repo)]) == 0


def test_a_file_git_ignores_is_not_checked(repo: Path) -> None:
    write(repo, ".gitignore", "/inventories/staging/group_vars/all/vault.yml\n")
    write(repo, "inventories/staging/group_vars/all/vault.yml", PLAIN)
    assert check.plaintext_vault_files(repo) == []


def test_this_repository_passes() -> None:
    root = Path(__file__).resolve().parents[3]
    assert check.plaintext_vault_files(root) == []
