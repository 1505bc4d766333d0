"""Settings: built-in default < config file < NUMOE_* environment variable < command-line flag.

The config file is TOML, at ``$NUMOE_CONFIG`` or ``$XDG_CONFIG_HOME/numoe/config.toml``
(``~/.config/numoe/config.toml``); ``numoe tune`` writes it, people may edit it. One table::

    [defaults]
    threads = 8          # -t / NUMOE_THREADS
    numa = "shard"       # --numa / NUMOE_NUMA: auto | shard | replicate | off
    numa_nodes = "0,1"   # --numa-nodes / NUMOE_NUMA_NODES
    smt = false          # --smt / NUMOE_SMT
    host = "127.0.0.1"   # numoe serve --host / NUMOE_HOST
    port = 8080          # numoe serve --port / NUMOE_PORT
    parallel = 4         # numoe serve -np / NUMOE_PARALLEL
    api_key = "..."      # numoe serve --api-key / NUMOE_API_KEY

An unknown table or key, or a bad value, is an error naming the file, the key and the fix:
a setting never passes unnoticed (an older engine let a stale config file silently override
a mistyped flag). :func:`resolve` records where each value came from; ``numoe doctor``
prints it.

Files numoe makes for itself (the built-in model, the bandwidth probe) live in
:func:`cache_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .runtime.numa import POLICIES, parse_numa_nodes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TABLE = "defaults"


class ConfigError(ValueError):
    """A bad config file or NUMOE_* variable: one line naming the file or variable, the key
    and the fix."""


def _threads(v: object) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("a whole number >= 1")
    return v


def _policy(v: object) -> str:
    if not isinstance(v, str) or v.strip() not in POLICIES:
        raise ValueError("one of " + ", ".join(POLICIES))
    return v.strip()


def _nodes(v: object) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    text = v.strip() if isinstance(v, str) else ""
    try:
        parse_numa_nodes(text)
    except ValueError:
        raise ValueError('a node list such as "0,1" or "0-3"') from None
    return text


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _port(v: object) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
        raise ValueError("a port number 0-65535 (0: any free port)")
    return v


def _text(v: object) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("a non-empty string")
    return v.strip()


def _bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError("true or false")


@dataclass(frozen=True)
class Setting:
    name: str  # key in [defaults] and attribute of the parsed flags
    flag: str  # the command-line flag
    default: object
    default_text: str  # the default in words, for --help and doctor
    parse: Callable[[object], object]  # ValueError(what is expected) for a bad value

    @property
    def env(self) -> str:
        return "NUMOE_" + self.name.upper()


SETTINGS = {
    s.name: s
    for s in (
        Setting("threads", "-t", None, "the physical cores this process may use", _threads),
        Setting("numa", "--numa", "auto", "auto", _policy),
        Setting("numa_nodes", "--numa-nodes", None, "every node this process may use", _nodes),
        Setting("smt", "--smt", False, "off", _bool),
        # numoe serve
        Setting("host", "--host", "127.0.0.1", "127.0.0.1 (this machine only)", _text),
        Setting("port", "--port", 8080, "8080", _port),
        Setting("parallel", "-np", 4, "4", _threads),
        Setting("api_key", "--api-key", None, "none (no key asked)", _text),
    )
}
THREAD_SETTINGS = ("threads", "numa", "numa_nodes", "smt")  # every command that runs a model
SERVE_SETTINGS = ("host", "port", "parallel", "api_key")  # numoe serve


@dataclass(frozen=True)
class Resolved:
    value: object
    source: str  # "default" | "config FILE" | "env NUMOE_X" | "flag -t"


def config_path() -> Path:
    """$NUMOE_CONFIG, else $XDG_CONFIG_HOME/numoe/config.toml (~/.config when unset)."""
    if os.environ.get("NUMOE_CONFIG"):
        return Path(os.environ["NUMOE_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "numoe" / "config.toml"


def cache_dir() -> Path:
    """$NUMOE_CACHE, else $XDG_CACHE_HOME/numoe (~/.cache when unset)."""
    if os.environ.get("NUMOE_CACHE"):
        return Path(os.environ["NUMOE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "numoe"


def read_config(path: Path | None = None) -> dict[str, object]:
    """The validated [defaults] of the config file ({} when there is none)."""
    path = config_path() if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: cannot read it ({e}); fix or remove the file") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: not valid TOML ({e}); fix or remove the file") from e
    for key, v in doc.items():
        if key != TABLE or not isinstance(v, dict):
            what = f"table [{key}]" if isinstance(v, dict) else f"key '{key}' outside [{TABLE}]"
            raise ConfigError(
                f"config {path}: unknown {what}; numoe reads one table, [{TABLE}] "
                f"(keys {', '.join(SETTINGS)}): move or remove it"
            )
    out = {}
    for key, v in doc.get(TABLE, {}).items():
        s = SETTINGS.get(key)
        if s is None:
            raise ConfigError(
                f"config {path}: unknown key '{key}' in [{TABLE}]; known keys: "
                f"{', '.join(SETTINGS)}: fix or remove it"
            )
        try:
            out[key] = s.parse(v)
        except ValueError as e:
            raise ConfigError(
                f"config {path}: [{TABLE}] {key} = {toml_value(v)}: expected {e}; fix or remove it"
            ) from None
    return out


def resolve(
    args: argparse.Namespace, names=tuple(SETTINGS), errors: list[str] | None = None
) -> dict[str, Resolved]:
    """Fill each setting in `names` that was not given as a flag (flags are parsed with
    ``default=argparse.SUPPRESS``, so a missing attribute means 'not given') from NUMOE_*,
    the config file or the default; record every source in ``args.settings``.

    A bad config file or variable is a ConfigError; with `errors` (a list: numoe doctor,
    which reports them) its message is appended there instead and the file, or the
    variable, is passed over."""
    path = config_path()
    try:
        found = read_config(path)
    except ConfigError as e:
        if errors is None:
            raise
        errors.append(str(e))
        found = {}
    out: dict[str, Resolved] = {}
    for name in names:
        s = SETTINGS[name]
        raw = os.environ.get(s.env, "")
        if name in vars(args):
            out[name] = Resolved(getattr(args, name), f"flag {s.flag}")
        elif raw.strip():
            try:
                out[name] = Resolved(s.parse(raw), f"env {s.env}")
            except ValueError as e:
                msg = f"{s.env}={raw!r}: expected {e}; fix or unset it"
                if errors is None:
                    raise ConfigError(msg) from None
                errors.append(msg)
        if name not in out:
            if name in found:
                out[name] = Resolved(found[name], f"config {path}")
            else:
                out[name] = Resolved(s.default, "default")
        setattr(args, name, out[name].value)
    args.settings = out
    args.config_file = path
    return out


def toml_value(v: object) -> str:
    """A TOML value for int, bool or str (a JSON string is a valid TOML basic string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


_HEADER_RE = re.compile(r"^\s*\[\s*([^\]]*?)\s*\]\s*(#.*)?$")
# key = value  # comment: values of SETTINGS are numbers, booleans and one-line strings
_VALUE = r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[^\s#]+'
_KEY_RE = re.compile(
    r"^(?P<lead>\s*(?P<q>[\"']?)(?P<key>[A-Za-z0-9_-]+)(?P=q)\s*=\s*)(?P<value>"
    + _VALUE
    + r")(?P<tail>\s*(#.*)?)$"
)


def write_config(values: dict[str, object], comment: str = "", path: Path | None = None) -> Path:
    """Set `values` in [defaults] of the config file, editing it in place: its comments,
    blank lines, other keys and their order are kept; a key already there gets the new value
    on its own line (a comment after it stays), a new one goes after the table's last key.
    `comment` lines go just above [defaults], replacing the block an earlier call with the
    same first words (up to the first comma, e.g. 'numoe tune') put there. Returns the path
    written."""
    path = config_path() if path is None else path
    for k, v in values.items():
        SETTINGS[k].parse(v)  # ValueError for a bad value: never write one
    read_config(path)  # ConfigError for a file that is not valid: never edit one
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = [
            "# numoe settings: flags override NUMOE_* variables, which override this file;",
            "# `numoe doctor` shows where each setting came from.",
        ]
    note = [f"# {c}" if c else "#" for c in comment.splitlines()]

    header = next((i for i, ln in enumerate(lines) if _table(ln) == TABLE), None)
    if header is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines.append(f"[{TABLE}]")
        header = len(lines) - 1
    end = next((i for i in range(header + 1, len(lines)) if _table(lines[i])), len(lines))
    todo = dict(values)
    last_key = header
    for i in range(header + 1, end):
        m = _KEY_RE.match(lines[i])
        if m is None:
            continue
        last_key = i
        if m["key"] in todo:
            v = todo.pop(m["key"])
            lines[i] = f"{m['lead']}{toml_value(v)}{m['tail']}"
    added = [f"{k} = {toml_value(v)}" for k, v in todo.items()]
    lines[last_key + 1 : last_key + 1] = added

    if note:  # replace an earlier block of the same kind just above the header
        marker = "# " + comment.splitlines()[0].split(",")[0]
        start = header
        while start > 0 and lines[start - 1].startswith("#"):
            start -= 1
        old = next((j for j in range(start, header) if lines[j].startswith(marker)), None)
        if old is not None:
            del lines[old:header]
            header = old
        lines[header:header] = note

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:  # the edit must read back as the values asked for (e.g. not a multi-line value)
        got = read_config(tmp)
        ok = all(got.get(k) == SETTINGS[k].parse(v) for k, v in values.items())
    except ConfigError:
        ok = False
    if not ok:
        tmp.unlink(missing_ok=True)
        want = ", ".join(f"{k} = {toml_value(v)}" for k, v in values.items())
        raise ConfigError(
            f"config {path}: could not update it in place; set {want} in [{TABLE}] by hand"
        )
    os.replace(tmp, path)
    return path


def _table(line: str) -> str | None:
    """The table a '[name]' line opens, else None."""
    m = _HEADER_RE.match(line)
    return m[1] if m else None


def setting_help(name: str, text: str) -> str:
    """`text` plus the setting's default and where else it can come from, for --help."""
    s = SETTINGS[name]
    return f"{text} (default: {s.default_text}; or {s.env}, or '{name}' in the config file)"
