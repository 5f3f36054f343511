#!/usr/bin/env python3
"""Check that each role's argument specs, defaults and README agree (`make lint` runs it).

For every role under roles/ (new roles are picked up by themselves):

- every variable of defaults/main.yml is an option of the `main` entry point in
  meta/argument_specs.yml;
- an option whose variable defaults/main.yml sets has `default:` equal to that value, so
  `ansible-doc -t role -r roles <role>` shows it. Values are compared as YAML data; a
  Jinja expression compares as its string. Jinja strings carry the `!unsafe` tag in the
  spec: Ansible templates the spec when the role validates its arguments, and an untagged
  `"{{ vault_x }}"` would fail there whenever vault_x is undefined, even where the
  inventory overrides the variable itself;
- an option that defaults/main.yml does not set has no `default:` and says `required:`
  itself. `required: true`: the role cannot work without it. `required: false`: the value
  comes from elsewhere on purpose (the inventory, such as `common_address`, or the vault),
  and the description says where;
- a literal default fits the option's type;
- README.md has the sections What it does, Variables, Tags, Example play and Tests (in
  that order, as `##` headings), its variables table is the one generated from the specs,
  its Tags section names every tag of tasks/main.yml, and the `molecule/<scenario>`
  directories it names exist.

With --fix it first rewrites what it can: each option's `default:` from defaults/main.yml
(copying that file's text, so its layout stays; nothing else in the spec file changes)
and the generated README tables. What it cannot fix is reported as usual.

Usage: check_argument_specs.py [--fix] [--roles DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ["What it does", "Variables", "Tags", "Example play", "Tests"]
TABLE_BEGIN = (
    "<!-- BEGIN variables: generated from meta/argument_specs.yml by "
    ".config/lint/check_argument_specs.py --fix -->"
)
TABLE_END = "<!-- END variables -->"
JINJA = re.compile(r"{{|{%|{#")
UNSAFE = "!unsafe"
# Longer defaults are left to defaults/main.yml in the README table.
CELL_MAX = 90
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


class Unsafe(str):
    """A string tagged !unsafe: Ansible never templates it."""

    __slots__ = ()


class Loader(yaml.SafeLoader):
    """YAML as Ansible reads it, as far as these files go: plain data plus !unsafe."""


Loader.add_constructor(UNSAFE, lambda loader, node: Unsafe(loader.construct_scalar(node)))


class Dumper(yaml.SafeDumper):
    """Writes Jinja strings with !unsafe, for defaults that cannot be copied as text."""


Dumper.add_representer(Unsafe, lambda dumper, data: dumper.represent_scalar(UNSAFE, str(data)))


def load(path: Path) -> tuple[Any, yaml.Node | None]:
    """The data of a YAML file and its node tree (which knows line and column of each value)."""
    loader = Loader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node


def mapping_item(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                return key_node, value_node
    return None


def has_jinja(value: Any) -> bool:
    return isinstance(value, str) and bool(JINJA.search(value))


def same(a: Any, b: Any) -> bool:
    """Equal as YAML data: 1, 1.0 and true differ; !unsafe does not change a string's value."""
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def untagged_jinja(value: Any) -> bool:
    if isinstance(value, list):
        return any(untagged_jinja(v) for v in value)
    if isinstance(value, dict):
        return any(untagged_jinja(v) for v in value.values())
    return has_jinja(value) and not isinstance(value, Unsafe)


def as_unsafe(value: Any) -> Any:
    if isinstance(value, list):
        return [as_unsafe(v) for v in value]
    if isinstance(value, dict):
        return {k: as_unsafe(v) for k, v in value.items()}
    return Unsafe(value) if has_jinja(value) else value


def type_problem(option: dict, value: Any) -> str | None:
    """Why a literal default does not fit the option's type; Jinja is checked at run time."""
    if has_jinja(value):
        return None
    kind = option.get("type", "str")
    allowed = TYPES.get(kind)
    if allowed is None or value is None:
        return None
    if not isinstance(value, allowed) or (kind in ("int", "float") and isinstance(value, bool)):
        return f"default {short(value)} is not of type {kind}"
    if "choices" in option and value not in option["choices"]:
        return f"default {short(value)} is not one of its choices"
    element_kind = option.get("elements")
    if kind == "list" and element_kind in TYPES:
        for item in value:
            problem = type_problem({"type": element_kind}, item)
            if problem:
                return f"an element's {problem}"
    return None


def plain(value: Any) -> Any:
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, str) else value


def short(value: Any) -> str:
    """A value as one line of YAML, for messages and the README."""
    text = yaml.dump(plain(value), default_flow_style=True, sort_keys=False, width=1 << 30)
    return text.strip().removesuffix("...").strip()


@dataclass
class Role:
    path: Path
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def problem(self, relpath: str, message: str) -> None:
        self.problems.append(f"roles/{self.name}/{relpath}: {message}")


# --- argument_specs against defaults -------------------------------------------------


def load_role(role: Role) -> tuple[dict, yaml.Node | None, dict, yaml.Node | None] | None:
    defaults_path = role.path / "defaults" / "main.yml"
    spec_path = role.path / "meta" / "argument_specs.yml"
    defaults, defaults_node = load(defaults_path) if defaults_path.exists() else ({}, None)
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        role.problem("defaults/main.yml", "is not a mapping of variables")
        return None
    if not spec_path.exists():
        role.problem("meta/argument_specs.yml", "missing: every role validates its variables")
        return None
    spec, spec_node = load(spec_path)
    entry_points = spec.get("argument_specs") if isinstance(spec, dict) else None
    if not isinstance(entry_points, dict) or "main" not in entry_points:
        role.problem("meta/argument_specs.yml", "has no argument_specs.main entry point")
        return None
    return defaults, defaults_node, entry_points, spec_node


def check_specs(role: Role) -> None:
    loaded = load_role(role)
    if loaded is None:
        return
    defaults, _, entry_points, _ = loaded
    where = "meta/argument_specs.yml"
    main_options = entry_points["main"].get("options") or {}
    for name in defaults:
        if name not in main_options:
            role.problem(where, f"{name} is set in defaults/main.yml but is not an option of main")
    for entry, spec in entry_points.items():
        for name, option in ((spec or {}).get("options") or {}).items():
            label = f"{name} ({entry})" if entry != "main" else name
            if not isinstance(option, dict):
                role.problem(where, f"{label} is not a mapping")
                continue
            check_option(role, label, option, defaults.get(name), name in defaults)


def check_option(role: Role, label: str, option: dict, value: Any, in_defaults: bool) -> None:
    where = "meta/argument_specs.yml"
    fix = " (--fix rewrites it)"
    if in_defaults:
        if option.get("required") is True:
            role.problem(where, f"{label} is required: true, but defaults/main.yml sets it")
        elif "default" not in option:
            role.problem(
                where, f"{label} has no default; defaults/main.yml has {short(value)}{fix}"
            )
        elif not same(option["default"], value):
            role.problem(
                where,
                f"{label} default {short(option['default'])} differs from defaults/main.yml "
                f"{short(value)}{fix}",
            )
        elif untagged_jinja(option["default"]):
            role.problem(
                where,
                f"{label} default holds Jinja without {UNSAFE}: argument validation would "
                f"evaluate it{fix}",
            )
        else:
            problem = type_problem(option, option["default"])
            if problem:
                role.problem(where, f"{label}: {problem}")
    elif "default" in option:
        role.problem(where, f"{label} has a default but defaults/main.yml does not set it{fix}")
    elif "required" not in option:
        role.problem(
            where,
            f"{label} has no default in defaults/main.yml: set one there, or say `required: true` "
            "(the role needs it from the inventory) or `required: false` (set elsewhere on "
            "purpose; the description says where)",
        )


# --- --fix for argument_specs --------------------------------------------------------


def last_line(lines: list[str], node: yaml.Node) -> int:
    """Index of the last line of a value, without the blank lines and comments after it."""
    end = value_end(node)
    while end > node.start_mark.line and (
        not lines[end].strip() or lines[end].lstrip().startswith("#")
    ):
        end -= 1
    return end


def value_end(node: yaml.Node) -> int:
    """The line a value ends on. A block collection's end mark is where the next token
    starts, and a block scalar's is the start of the line after it: neither is its end."""
    if isinstance(node, yaml.ScalarNode):
        block = node.style in (">", "|")
        return node.end_mark.line - 1 if block and node.end_mark.column == 0 else node.end_mark.line
    if node.flow_style or not node.value:
        return node.end_mark.line
    last = node.value[-1]
    return value_end(last[1] if isinstance(last, tuple) else last)


def unsafe_marks(node: yaml.Node) -> list[tuple[int, int]]:
    """Where `!unsafe ` must go: before every untagged string scalar that holds Jinja."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:str" and JINJA.search(node.value):
            return [(node.start_mark.line, node.start_mark.column)]
        return []
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [value for _, value in node.value]
    return [mark for child in children for mark in unsafe_marks(child)]


def copied_default(
    defaults_lines: list[str], key: yaml.Node, value: yaml.Node, column: int
) -> list[str]:
    """`default:` with the value's text from defaults/main.yml, re-indented to `column`."""
    lines = list(defaults_lines)
    end = last_line(lines, value)
    end_column = value.end_mark.column if value.end_mark.line == end else None
    for line_no, col in sorted(unsafe_marks(value), reverse=True):
        lines[line_no] = f"{lines[line_no][:col]}{UNSAFE} {lines[line_no][col:]}"
        if line_no == end and end_column is not None and col < end_column:
            end_column += len(UNSAFE) + 1
    start = value.start_mark
    shift = " " * (column - key.start_mark.column)
    block_scalar = isinstance(value, yaml.ScalarNode) and value.style in (">", "|")
    body = []
    # A value that starts on the key's line has that part in `first`, below.
    for line_no in range(start.line + (start.line == key.start_mark.line), end + 1):
        text = lines[line_no][: end_column if line_no == end and end_column is not None else None]
        if not block_scalar and text.lstrip().startswith("#"):
            continue
        body.append(f"{shift}{text}".rstrip() if text.strip() else "")
    head = " " * column + "default:"
    if start.line == key.start_mark.line:
        first = lines[start.line][start.column : end_column if start.line == end else None].rstrip()
        return [f"{head} {first}", *body]
    return [head, *body]


def dumped_default(value: Any, column: int) -> list[str]:
    text = yaml.dump(
        as_unsafe(value), Dumper=Dumper, default_flow_style=True, sort_keys=False, width=1 << 30
    )
    return [" " * column + "default: " + text.strip().removesuffix("...").strip()]


def option_edit(lines: list[str], option: yaml.MappingNode) -> tuple[int, int] | None:
    """Lines [first, last) of `option` that its new `default:` replaces (empty: inserted there)."""
    found = mapping_item(option, "default")
    if found:
        key, value = found
        if lines[key.start_mark.line][: key.start_mark.column].strip():
            return None
        return key.start_mark.line, last_line(lines, value) + 1
    for before in ("description", "options"):
        found = mapping_item(option, before)
        if found:
            return found[0].start_mark.line, found[0].start_mark.line
    last_value = option.value[-1][1]
    return last_line(lines, last_value) + 1, last_line(lines, last_value) + 1


@dataclass
class Source:
    """defaults/main.yml as data, as nodes and as lines."""

    values: dict
    node: yaml.Node | None
    lines: list[str]


def fix_specs(role: Role) -> None:
    loaded = load_role(role)
    if loaded is None:
        return
    defaults, defaults_node, entry_points, spec_node = loaded
    spec_path = role.path / "meta" / "argument_specs.yml"
    defaults_text = (role.path / "defaults" / "main.yml").read_text() if defaults_node else ""
    source = Source(defaults, defaults_node, defaults_text.splitlines())
    lines = spec_path.read_text().splitlines()
    _, entries_node = mapping_item(spec_node, "argument_specs") or (None, None)
    options: list[tuple[str, str, yaml.Node]] = []
    for entry in entry_points:
        _, entry_node = mapping_item(entries_node, entry) or (None, None)
        _, options_node = mapping_item(entry_node, "options") or (None, None)
        if isinstance(options_node, yaml.MappingNode):
            options += [(entry, name.value, node) for name, node in options_node.value]
    # Bottom up, so that the line numbers of the options above stay valid.
    for option in sorted(options, key=lambda o: o[2].start_mark.line, reverse=True):
        lines = fix_option(role, lines, option, source)
    text = "\n".join(lines) + "\n"
    if text != spec_path.read_text():
        spec_path.write_text(text)


def wanted(entry: str, name: str, fixed: dict, source: Source) -> bool:
    """Whether an option (as parsed from the edited file) has the default it should have."""
    option = fixed["argument_specs"][entry]["options"][name]
    if name not in source.values:
        return "default" not in option
    return (
        "default" in option
        and same(option["default"], source.values[name])
        and not untagged_jinja(option["default"])
    )


def fix_option(
    role: Role, lines: list[str], option: tuple[str, str, yaml.Node], source: Source
) -> list[str]:
    """`lines` with the option's `default:` as defaults/main.yml has it (or without one)."""
    entry, name, node = option
    current = yaml.load("\n".join(lines), Loader=Loader)  # noqa: S506 - a safe loader plus !unsafe
    if not isinstance(node, yaml.MappingNode) or wanted(entry, name, current, source):
        return lines
    if node.flow_style:
        role.problem("meta/argument_specs.yml", f"{name}: write it as a block so --fix can edit it")
        return lines
    column = node.value[0][0].start_mark.column
    candidates: list[list[str]] = [[]]
    if name in source.values:
        key, value = mapping_item(source.node, name) or (None, None)
        copied = copied_default(source.lines, key, value, column) if key and value else []
        candidates = [copied, dumped_default(source.values[name], column)]
    for candidate in candidates:
        edit = option_edit(lines, node)
        if edit is None:
            break
        first, last = edit
        attempt = lines[:first] + candidate + lines[last:]
        try:
            if wanted(entry, name, yaml.load("\n".join(attempt), Loader=Loader), source):  # noqa: S506
                return attempt
        except (yaml.YAMLError, KeyError, TypeError):
            continue
    role.problem("meta/argument_specs.yml", f"{name}: --fix could not write its default")
    return lines


# --- README --------------------------------------------------------------------------


def sections(text: str) -> list[tuple[str, str]]:
    """The README's `##` sections as (heading, body), skipping code blocks."""
    found: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            found.append((line[3:].strip(), []))
        elif found:
            found[-1][1].append(line)
    return [(heading, "\n".join(body)) for heading, body in found]


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def default_cell(option: dict) -> str:
    if option.get("required") is True:
        return "required"
    if "default" not in option:
        return "unset"
    value = option["default"]
    text = str(value) if isinstance(value, str) else short(value)
    if isinstance(value, str) and not value:
        text = '""'
    if len(text) > CELL_MAX:
        return "see [defaults/main.yml](defaults/main.yml)"
    tick = "``" if "`" in text else "`"
    pad = " " if tick == "``" else ""
    return f"{tick}{pad}{cell(text)}{pad}{tick}"


def type_cell(option: dict) -> str:
    kind = option.get("type", "str")
    return f"{kind} of {option['elements']}" if "elements" in option else kind


def variables_table(entry_points: dict) -> str:
    out = [TABLE_BEGIN]
    for entry, spec in entry_points.items():
        if entry != "main":
            out += ["", f"Entry point `{entry}` (`tasks_from: {entry}`):"]
        out += ["", "| Variable | Type | Default | Description |", "|---|---|---|---|"]
        for name, option in ((spec or {}).get("options") or {}).items():
            description = option.get("description", "")
            if isinstance(description, list):
                description = " ".join(description)
            out.append(
                f"| `{name}` | {type_cell(option)} | {default_cell(option)} | {cell(description)} |"
            )
    out += ["", TABLE_END]
    return "\n".join(out)


def generated_readme(text: str, entry_points: dict) -> str | None:
    """The README with its variables table regenerated; a new table ends its Variables section."""
    table = variables_table(entry_points)
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin >= 0 and end > begin:
        return text[:begin] + table + text[end + len(TABLE_END) :]
    lines = text.splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("## ")]
    start = next((i for i in headings if lines[i] == "## Variables"), None)
    if start is None:
        return None
    stop = next((i for i in headings if i > start), len(lines))
    while stop > start + 1 and not lines[stop - 1].strip():
        stop -= 1
    rest = ["", *lines[stop:]] if lines[stop:] and lines[stop].strip() else lines[stop:]
    return "\n".join([*lines[:stop], "", table, *rest]).rstrip("\n") + "\n"


def task_tags(role: Role) -> set[str]:
    path = role.path / "tasks" / "main.yml"
    tasks, _ = load(path) if path.exists() else ([], None)
    tags: set[str] = set()
    for task in tasks or []:
        value = task.get("tags", []) if isinstance(task, dict) else []
        tags.update([value] if isinstance(value, str) else value)
    return tags - {"always", "never"}


def check_readme(role: Role, fix: bool) -> None:
    path = role.path / "README.md"
    if not path.exists():
        role.problem("README.md", f"missing: write one with the sections {', '.join(SECTIONS)}")
        return
    spec_path = role.path / "meta" / "argument_specs.yml"
    if spec_path.exists():
        check_readme_table(role, path, spec_path, fix)
    found = sections(path.read_text())
    headings = [heading for heading, _ in found]
    if headings != SECTIONS:
        role.problem("README.md", f"## sections are {headings}, expected {SECTIONS}")
    bodies = dict(found)
    named = set(re.findall(r"`([a-z0-9_]+)`", bodies.get("Tags", "")))
    tags = task_tags(role)
    for tag in sorted(tags - named):
        role.problem("README.md", f"Tags does not name the tag `{tag}` of tasks/main.yml")
    for word in sorted(named - tags):
        if word == role.name or word.startswith(f"{role.name}_"):
            role.problem("README.md", f"Tags names `{word}`, which tasks/main.yml does not have")
    scenarios = set(re.findall(r"molecule/([A-Za-z0-9_-]+)", bodies.get("Tests", "")))
    if not scenarios:
        role.problem("README.md", "Tests names no molecule/<scenario>")
    for scenario in sorted(scenarios):
        if not (ROOT / "molecule" / scenario / "molecule.yml").exists():
            role.problem("README.md", f"Tests names molecule/{scenario}, which does not exist")


def check_readme_table(role: Role, path: Path, spec_path: Path, fix: bool) -> None:
    text = path.read_text()
    spec, _ = load(spec_path)
    generated = generated_readme(text, (spec or {}).get("argument_specs") or {})
    if generated is None:
        role.problem("README.md", "has no Variables section for the generated table")
    elif generated != text and fix:
        path.write_text(generated)
    elif generated != text:
        role.problem("README.md", "variables table differs from the specs (--fix rewrites it)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="rewrite defaults and tables first")
    parser.add_argument("--roles", type=Path, default=ROOT / "roles", help="roles directory")
    args = parser.parse_args()
    roles = [Role(path) for path in sorted(args.roles.iterdir()) if path.is_dir()]
    problems: list[str] = []
    for role in roles:
        try:
            if args.fix:
                fix_specs(role)
            check_specs(role)
            check_readme(role, args.fix)
        except yaml.YAMLError as error:
            role.problems.append(f"roles/{role.name}: YAML error: {error}")
        problems += role.problems
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"check_argument_specs: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_argument_specs: {len(roles)} roles agree with their defaults and READMEs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
