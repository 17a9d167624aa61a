"""Reads a YAML config: `${VAR}` / `${VAR:-default}` substitution, `*_file` keys, validation.

Every problem is collected into one ConfigError whose lines name their key path
(`routes[3].upstream: no upstream named 'api2'`). Nothing here opens a socket or sets up logging.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SOURCE_TAGS = {"store", "jwt", "introspection"}
#: keys that are paths by nature: the gateway reads those files itself (and re-reads them when
#: they change), so they are kept as paths (relative ones against the config file's folder)
#: rather than replaced by their content like other `x_file` keys
PATH_KEYS = frozenset({"cert_file", "key_file", "ca_file", "client_ca_file", "nonce_secret_file"})


def key_path(loc: tuple[int | str, ...]) -> str:
    """`('routes', 3, 'upstream')` -> `routes[3].upstream` (union tags dropped)."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _SOURCE_TAGS:
            pass  # discriminated-union tag pydantic inserts into the location
        elif part.startswith(("function-", "tagged-union")):
            pass
        else:
            out += f".{part}" if out else part
        prev = part
    return out or "(top level)"


def _substitute(text: str, path: str, env: Mapping[str, str], problems: list[str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _VAR.sub(repl, text)


def _resolve(node: Any, path: str, env: Mapping[str, str], base: Path, problems: list[str]) -> Any:
    """Walk the YAML tree: substitute variables in strings, replace `x_file` keys by `x`
    (except PATH_KEYS, made absolute)."""
    if isinstance(node, str):
        return _substitute(node, path, env, problems)
    if isinstance(node, list):
        return [_resolve(v, f"{path}[{i}]", env, base, problems) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[Any, Any] = {}
    for key, value in node.items():
        sub = f"{path}.{key}" if path else str(key)
        value = _resolve(value, sub, env, base, problems)
        if key in PATH_KEYS:
            out[key] = str(base / value) if isinstance(value, str) and value else value
            continue
        if isinstance(key, str) and key.endswith("_file") and len(key) > 5:
            target = key[:-5]
            if target in node:
                problems.append(f"{sub}: give either `{target}` or `{key}`, not both")
                continue
            if not isinstance(value, str):
                problems.append(f"{sub}: must be a file path")
                continue
            file = base / value
            try:
                out[target] = file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(f"{sub}: cannot read {value}: {exc.strerror}")
            continue
        out[key] = value
    return out


def parse_config(
    data: Any, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> GatewayConfig:
    """Validate an already-parsed YAML document; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config must be a YAML mapping"])
    problems: list[str] = []
    data = _resolve(data, "", env, base_dir or Path.cwd(), problems)
    upstreams = data.get("upstreams")
    names = set(upstreams) if isinstance(upstreams, dict) else set()
    limits = data.get("rate_limits")
    limits = limits if isinstance(limits, dict) else {}
    context = {
        "upstreams": names,
        "rate_limits": set(limits),
        "rate_limit_keys": {
            name: tuple(p["key"]) if isinstance(p, dict) and isinstance(p.get("key"), list) else ()
            for name, p in limits.items()
        },
    }
    try:
        config = GatewayConfig.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key_path(tuple(err['loc']))}: {msg}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read, substitute and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    return parse_config(data, env, p.parent)
