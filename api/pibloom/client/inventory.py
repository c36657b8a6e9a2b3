"""Server lists: URLs on the command line, a plain file, or an Ansible inventory (INI or YAML).

An inventory names machines, not API endpoints, so each host becomes
`http://{ansible_host or name}:{pibloom_port or --port}`; a `pibloom_url` variable overrides the whole
URL. `host:port` in an inventory is Ansible's SSH port and is ignored; in a plain list it is the API port.
Ansible itself is not a dependency: only the inventory file formats are read (groups, children, vars,
`[01:04]` host ranges), with no plugins or Jinja templating.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_PORT = 8000
_RANGE = re.compile(r"\[([^\]:]+):([^\]:]+)(?::(\d+))?\]")
_SECTION = re.compile(r"^\[([^\]]+)\]$")


class InventoryError(ValueError):
    """The server list cannot be read."""


def normalize_url(value: str, default_port: int = DEFAULT_PORT) -> str:
    """`pi1` -> `http://pi1:8000`; `pi1:8001` -> `http://pi1:8001`; a full URL is kept.

    A trailing `/v1` is dropped, so the base URL an OpenAI SDK would take works too.
    """
    text = value.strip()
    if not text:
        raise InventoryError("empty server address")
    if "://" not in text:
        host = text.rstrip("/")
        # IPv6 literals come in brackets: `[::1]` or `[::1]:8000`.
        has_port = re.search(r"\]:\d+$", host) if host.startswith("[") else re.search(r":\d+$", host)
        if not has_port:
            host = f"{host}:{default_port}"
        text = f"http://{host}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InventoryError(f"not an http(s) server address: {value!r}")
    base = text.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


def expand_hosts(pattern: str) -> list[str]:
    """Ansible host ranges: `pi[01:03]` -> pi01, pi02, pi03; `node-[a:c]`; `[0:10:5]` has a stride."""
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    start, end, stride = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        values = [str(n).zfill(width) for n in range(int(start), int(end) + 1, stride)]
    elif len(start) == len(end) == 1 and start in string.ascii_letters and end in string.ascii_letters:
        values = [chr(c) for c in range(ord(start), ord(end) + 1, stride)]
    else:
        raise InventoryError(f"bad host range in {pattern!r}")
    if not values:
        raise InventoryError(f"empty host range in {pattern!r}")
    return [name for value in values for name in expand_hosts(f"{head}{value}{tail}")]


@dataclass
class Group:
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    groups: dict[str, Group] = field(default_factory=dict)
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def group(self, name: str) -> Group:
        return self.groups.setdefault(name, Group())

    def add_host(self, group: str, name: str, variables: dict[str, Any]) -> None:
        members = self.group(group).hosts
        if name not in members:
            members.append(name)
        self.host_vars.setdefault(name, {}).update(variables)

    def _walk(self, name: str, seen: set[str]) -> Iterator[str]:
        """Group names under `name`, parents before children, each once (cycles are tolerated)."""
        if name in seen:
            return
        seen.add(name)
        yield name
        for child in self.groups.get(name, Group()).children:
            yield from self._walk(child, seen)

    def hosts(self, group: str | None = None) -> list[str]:
        if group is None or group == "all":
            names = [name for g in self.groups.values() for name in g.hosts]
        else:
            if group not in self.groups:
                known = ", ".join(sorted(self.groups)) or "none"
                raise InventoryError(f"no group {group!r} in the inventory (groups: {known})")
            names = [name for g in self._walk(group, set()) for name in self.groups[g].hosts]
        return list(dict.fromkeys(names))

    def _depths(self) -> dict[str, int]:
        """Each group's depth below `all` (its longest parent chain), which orders var precedence."""
        depth = dict.fromkeys(self.groups, 0)
        for _ in range(len(self.groups)):
            changed = False
            for name, group in self.groups.items():
                for child in group.children:
                    if child in depth and depth[child] < depth[name] + 1 <= len(self.groups):
                        depth[child] = depth[name] + 1
                        changed = True
            if not changed:
                break
        return depth

    def variables(self, host: str) -> dict[str, Any]:
        """Vars of `all`, then of every group holding the host (directly or through children), outer
        groups first, then the host's own: Ansible's precedence for the simple cases."""
        depth = self._depths()
        holding = [name for name in self.groups if name == "all" or host in self.hosts(name)]
        merged: dict[str, Any] = {}
        for name in sorted(holding, key=lambda name: (name != "all", depth[name], name)):
            merged.update(self.groups[name].vars)
        merged.update(self.host_vars.get(host, {}))
        return merged

    def urls(self, group: str | None = None, default_port: int = DEFAULT_PORT) -> list[str]:
        urls = []
        for host in self.hosts(group):
            variables = self.variables(host)
            if variables.get("pibloom_url"):
                urls.append(normalize_url(str(variables["pibloom_url"]), default_port))
                continue
            address = str(variables.get("ansible_host") or host)
            port = int(variables.get("pibloom_port") or default_port)
            urls.append(normalize_url(f"{address}:{port}", default_port))
        return list(dict.fromkeys(urls))


def _ini_value(text: str) -> Any:
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _ini_vars(tokens: list[str], where: str) -> dict[str, Any]:
    variables = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise InventoryError(f"{where}: expected key=value, got {token!r}")
        variables[key] = _ini_value(value)
    return variables


def parse_ini(text: str, source: str = "inventory") -> Inventory:
    inventory = Inventory()
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{source}:{number}"
        header = _SECTION.match(line)
        if header:
            section, _, kind = header.group(1).partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise InventoryError(f"{where}: unknown section kind {kind!r}")
            inventory.group(section)
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"{where}: {exc}") from exc
        if not tokens:
            continue
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise InventoryError(f"{where}: expected key=value in [{section}:vars]")
            inventory.group(section).vars[key.strip()] = _ini_value(value)
        elif kind == "children":
            inventory.group(section).children.append(tokens[0])
            inventory.group(tokens[0])
        else:
            # `name:port` is the SSH port in Ansible; the API port comes from pibloom_port.
            pattern = re.sub(r":\d+$", "", tokens[0])
            variables = _ini_vars(tokens[1:], where)
            for name in expand_hosts(pattern):
                inventory.add_host(section, name, variables)
    return inventory


def _yaml_group(inventory: Inventory, name: str, body: Any, source: str) -> None:
    group = inventory.group(name)
    if body is None:
        return
    if not isinstance(body, dict):
        raise InventoryError(f"{source}: group {name!r} must be a mapping")
    hosts = body.get("hosts") or {}
    if not isinstance(hosts, dict):
        raise InventoryError(f"{source}: hosts of {name!r} must be a mapping")
    for pattern, variables in hosts.items():
        if variables is not None and not isinstance(variables, dict):
            raise InventoryError(f"{source}: vars of host {pattern!r} must be a mapping")
        bare = re.sub(r":\d+$", "", str(pattern))
        for host in expand_hosts(bare):
            inventory.add_host(name, host, dict(variables or {}))
    group_vars = body.get("vars") or {}
    if not isinstance(group_vars, dict):
        raise InventoryError(f"{source}: vars of {name!r} must be a mapping")
    group.vars.update(group_vars)
    children = body.get("children") or {}
    if not isinstance(children, dict):
        raise InventoryError(f"{source}: children of {name!r} must be a mapping")
    for child, child_body in children.items():
        if child not in group.children:
            group.children.append(str(child))
        _yaml_group(inventory, str(child), child_body, source)


def parse_yaml(text: str, source: str = "inventory") -> Inventory:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: a YAML inventory is a mapping of groups (e.g. `all:`)")
    inventory = Inventory()
    for name, body in data.items():
        _yaml_group(inventory, str(name), body, source)
    return inventory


def parse_plain(text: str, default_port: int, source: str = "servers") -> list[str]:
    urls = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            urls.append(normalize_url(line, default_port))
        except InventoryError as exc:
            raise InventoryError(f"{source}:{number}: {exc}") from exc
    return list(dict.fromkeys(urls))


def _looks_like_ini_inventory(text: str) -> bool:
    for raw in text.splitlines():
        line = raw.strip()
        if _SECTION.match(line) or re.match(r"^\S+\s+\w+=", line):
            return True
    return False


def read_servers(path: str | Path, *, group: str | None = None, default_port: int = DEFAULT_PORT) -> list[str]:
    """Server URLs from a file: YAML inventory (.yml/.yaml), INI inventory, or one address a line."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}") from exc
    if file.suffix.lower() in (".yml", ".yaml"):
        urls = parse_yaml(text, str(path)).urls(group, default_port)
    elif _looks_like_ini_inventory(text):
        urls = parse_ini(text, str(path)).urls(group, default_port)
    else:
        if group is not None:
            raise InventoryError(f"{path}: --group needs an Ansible inventory, this is a plain list")
        urls = parse_plain(text, default_port, str(path))
    if not urls:
        raise InventoryError(f"{path}: no servers found" + (f" in group {group!r}" if group else ""))
    return urls
