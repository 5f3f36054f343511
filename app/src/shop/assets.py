"""Fingerprinted static assets and their manifest.

Files whose names carry a hash of their content can be cached forever
(nginx sends `immutable`); a new version gets a new name. index.html keeps
its name and a short cache lifetime, and points at the current names.
manifest.json maps each logical name to its fingerprinted file so the nginx
role (and anything else) can find them.
"""

import hashlib
import json
import re
from pathlib import Path

FINGERPRINTED = ("app.css", "app.js", "logo.svg")
PAGES = ("index.html",)
MANIFEST = "manifest.json"
# {{ asset:app.css }} in a page becomes /static/app.<hash>.css
_PLACEHOLDER = re.compile(r"\{\{\s*asset:([\w.-]+)\s*\}\}")
_FINGERPRINTED_NAME = re.compile(r"^(?P<stem>[\w-]+)\.(?P<hash>[0-9a-f]{8})\.(?P<ext>\w+)$")


def fingerprint_name(logical: str, content: bytes) -> str:
    stem, _, ext = logical.rpartition(".")
    return f"{stem}.{hashlib.sha256(content).hexdigest()[:8]}.{ext}"


def build(source_dir: Path) -> dict[str, bytes]:
    """Every file the static directory should hold, by name."""
    manifest: dict[str, str] = {}
    outputs: dict[str, bytes] = {}
    for logical in FINGERPRINTED:
        content = (source_dir / logical).read_bytes()
        manifest[logical] = fingerprint_name(logical, content)
        outputs[manifest[logical]] = content

    def link(match: re.Match[str]) -> str:
        return f"/static/{manifest[match.group(1)]}"

    for page in PAGES:
        outputs[page] = _PLACEHOLDER.sub(link, (source_dir / page).read_text()).encode()
    outputs[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return outputs


def _stale(static_dir: Path, outputs: dict[str, bytes]) -> list[Path]:
    return [
        path
        for path in static_dir.iterdir()
        if _FINGERPRINTED_NAME.match(path.name) and path.name not in outputs
    ]


def check(static_dir: Path, source_dir: Path) -> list[str]:
    """What differs between the static directory and a fresh build; empty when current."""
    outputs = build(source_dir)
    problems = [
        f"{name} is missing or out of date"
        for name, content in outputs.items()
        if not (static_dir / name).is_file() or (static_dir / name).read_bytes() != content
    ]
    problems += [f"{path.name} is not in the manifest" for path in _stale(static_dir, outputs)]
    return problems


def write(static_dir: Path, source_dir: Path) -> dict[str, str]:
    outputs = build(source_dir)
    static_dir.mkdir(parents=True, exist_ok=True)
    for path in _stale(static_dir, outputs):
        path.unlink()
    for name, content in outputs.items():
        (static_dir / name).write_bytes(content)
    return json.loads(outputs[MANIFEST])
