"""Environment variables mapped onto the TOML configuration (balena, containers).

A container is configured by its environment (balena's fleet and device
variables), not by editing a file. :func:`env_table` turns the ``VSM_*``
variables into a TOML-shaped overlay; :func:`config_from_env` lays that over
an optional base file (``VSM_CONFIG``) and validates the result with the same
:func:`~vsm_edge.agent.config.loader.parse_config` as a TOML file, so every rule of
docs/configuration.md holds, and an error names the variable::

    config error: VSM_STATUS_PORT (status.port): must be <= 65535, got 70000

Pure: the environment is an argument, and so is the lookup of an interface's
addresses (``VSM_DISCOVERY_INTERFACES=eth0`` is resolved by the caller's
``interface_addresses``). Unknown ``VSM_*`` variables are errors (a misspelt
variable must not silently fall back to a default); ``VSM_EDGE_*`` is left to
the project's scripts. The table of variables is :data:`ENV_VARS`; the
documentation (docs/deploy.md) is checked against it by a test.

``VSM_UNITS`` holds the whole ``[[units]]`` array, as JSON (a list of
``{"name", "kind", "options"}`` objects) or as TOML (``[[units]]`` tables, or
``units = [{...}]`` on one line); it replaces the base file's units. Any error
in it, from its syntax to a unit's key, names ``VSM_UNITS``::

    config error: VSM_UNITS (units[1].name): required
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._errors import ConfigError
from .loader import MAX_CONFIG_BYTES, NESTED_TOO_DEEPLY, parse_config
from .schema import AgentConfig

__all__ = [
    "ENV_VARS",
    "RUN_ENV_VARS",
    "EnvVar",
    "config_from_env",
    "env_table",
    "overlay",
]

PREFIX = "VSM_"
RESERVED_PREFIX = "VSM_EDGE_"  # the project's scripts (VSM_EDGE_VENV)
MAX_VALUE = 4096
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")

Kind = Literal["str", "int", "float", "bool", "list", "interfaces", "units"]


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One variable: its name, the dotted config key it sets, how its text is read."""

    name: str
    key: str
    kind: Kind
    help: str


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("VSM_NODE_ID", "node.id", "str", "node id; default: BALENA_DEVICE_NAME_AT_INIT"),
    EnvVar("VSM_MESH", "node.mesh", "str", "the mesh (vsm/{mesh}/...)"),
    EnvVar("VSM_ZONE", "node.zone", "str", "the node's zone"),
    EnvVar("VSM_DATA_DIR", "node.data_dir", "str", "state directory (the named volume)"),
    EnvVar("VSM_KEY_FILE", "node.key_file", "str", "node key; default data_dir/node.key"),
    EnvVar("VSM_BROKER_URL", "broker.url", "str", "mqtt[s]://host:port, embedded or mdns"),
    EnvVar("VSM_BROKER_TLS", "broker.tls", "bool", "TLS to the broker"),
    EnvVar("VSM_BROKER_CA_FILE", "broker.ca_file", "str", "CA bundle for TLS"),
    EnvVar("VSM_BROKER_CERT_FILE", "broker.cert_file", "str", "client certificate"),
    EnvVar("VSM_BROKER_KEY_FILE", "broker.key_file", "str", "client certificate's key"),
    EnvVar("VSM_BROKER_USERNAME", "broker.username", "str", "broker user name"),
    EnvVar("VSM_BROKER_PASSWORD_FILE", "broker.password_file", "str", "file holding the password"),
    EnvVar("VSM_BROKER_KEEPALIVE_S", "broker.keepalive_s", "int", "MQTT keepalive, seconds"),
    EnvVar("VSM_DISCOVERY_ENABLED", "discovery.enabled", "bool", "mDNS discovery on/off"),
    EnvVar(
        "VSM_DISCOVERY_INTERFACES",
        "discovery.interfaces",
        "interfaces",
        "comma-separated IPv4 addresses or interface names (eth0, wlan0), or auto",
    ),
    EnvVar("VSM_STATUS_ENABLED", "status.enabled", "bool", "local status endpoint on/off"),
    EnvVar("VSM_STATUS_PORT", "status.port", "int", "status endpoint port (loopback)"),
    EnvVar("VSM_S5_ADMIN_KEYS", "s5.admin_keys", "list", "comma-separated admin public keys"),
    EnvVar("VSM_S5_POLICY_FILE", "s5.policy_file", "str", "signed policy file"),
    EnvVar("VSM_SHUTDOWN_TIMEOUT_S", "runtime.shutdown_timeout_s", "float", "graceful stop, <= 5"),
    EnvVar("VSM_HOMEASSISTANT_ENABLED", "homeassistant.enabled", "bool", "HA MQTT discovery"),
    EnvVar(
        "VSM_HOMEASSISTANT_PREFIX",
        "homeassistant.discovery_prefix",
        "str",
        "HA discovery prefix (default homeassistant)",
    ),
    EnvVar("VSM_HOMEASSISTANT_COMMANDS", "homeassistant.commands", "bool", "unit commands from HA"),
    EnvVar(
        "VSM_UNITS",
        "units",
        "units",
        "the [[units]] array as JSON or TOML; replaces the base file's units",
    ),
)
"""Every config variable; ``VSM_CONFIG`` and :data:`RUN_ENV_VARS` are read elsewhere."""

RUN_ENV_VARS: Mapping[str, str] = {
    "VSM_CONFIG": "a base TOML file the variables are laid over",
    "VSM_LOG_LEVEL": "default of --log-level",
    "VSM_LOG_FORMAT": "default of --log-format (text or json)",
}
"""Variables that are not config keys: the base file and the run options."""

_BY_NAME = {v.name: v for v in ENV_VARS}
_BY_KEY = {v.key: v for v in ENV_VARS}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


MAX_UNITS_VALUE = 65536
"""``VSM_UNITS`` may be longer than other variables (a unit's options)."""

_JSON_START = re.compile(r"\{|\[(?!\s*\[)")  # not [[units]]
_UNITS_SHAPE = (
    'expected a JSON array of {"name", "kind", "options"} objects, or TOML [[units]] tables'
)


def _units(text: str) -> list[Any]:
    """The ``[[units]]`` array given by ``VSM_UNITS``: JSON or TOML, shape checked.

    Text that starts with ``[`` (but not ``[[``) or ``{`` is JSON (and must
    be an array); anything else is TOML whose only key is ``units``. The
    units' own keys are checked by the loader, as for a file.
    """
    value = text.strip()
    data: Any
    if _JSON_START.match(value):
        try:
            data = json.loads(value, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise ConfigError("VSM_UNITS", f"invalid JSON: {exc} ({_UNITS_SHAPE})") from None
        except RecursionError:
            raise ConfigError("VSM_UNITS", f"invalid JSON: {NESTED_TOO_DEEPLY}") from None
    else:
        try:
            doc = tomllib.loads(value)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("VSM_UNITS", f"invalid TOML: {exc} ({_UNITS_SHAPE})") from None
        except RecursionError:
            raise ConfigError("VSM_UNITS", f"invalid TOML: {NESTED_TOO_DEEPLY}") from None
        other = sorted(set(doc) - {"units"})
        if other:
            raise ConfigError("VSM_UNITS", f"TOML key {other[0]!r} is not units ({_UNITS_SHAPE})")
        if "units" not in doc:
            raise ConfigError("VSM_UNITS", f"no units in it ({_UNITS_SHAPE})")
        data = doc["units"]
    if not isinstance(data, list):
        raise ConfigError("VSM_UNITS", f"got {type(data).__name__}: {_UNITS_SHAPE}")
    _no_null(data, "units")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


MAX_UNITS_DEPTH = 32
"""How deep ``VSM_UNITS`` may nest arrays and tables (a unit's options are shallow)."""


def _no_null(value: Any, key: str, depth: int = 0) -> None:
    """TOML has no null: a JSON null would reach a unit as None, so it is refused.

    Values nested deeper than :data:`MAX_UNITS_DEPTH` are refused too.
    """
    if depth > MAX_UNITS_DEPTH:
        raise ConfigError(f"VSM_UNITS ({key})", f"nested deeper than {MAX_UNITS_DEPTH}")
    if value is None:
        raise ConfigError(f"VSM_UNITS ({key})", "null is not allowed (leave the key out)")
    if isinstance(value, dict):
        for name, item in value.items():
            _no_null(item, f"{key}.{name}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_null(item, f"{key}[{i}]", depth + 1)


def _convert(var: EnvVar, text: str, interface_addresses: Callable[[str], list[str]]) -> Any:
    where = f"{var.name} ({var.key})"
    value = text.strip()
    if var.kind == "units":
        return _units(text)
    if var.kind == "str":
        return value
    if var.kind == "bool":
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(where, f"expected true or false (1/0, yes/no, on/off), got {text!r}")
    if var.kind == "int":
        try:
            return int(value, 10)
        except ValueError:
            raise ConfigError(where, f"expected an integer, got {text!r}") from None
    if var.kind == "float":
        try:
            return float(value)
        except ValueError:
            raise ConfigError(where, f"expected a number, got {text!r}") from None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if var.kind == "list":
        return items
    # interfaces: IP addresses stay as they are; names are looked up;
    # "auto" is every non-loopback IPv4 address of the host (looked up as "*")
    if not items:
        raise ConfigError(where, "expected at least one address or interface name")
    if [i.lower() for i in items] == ["auto"]:
        found = interface_addresses("*")
        if not found:
            raise ConfigError(where, "auto: this host has no non-loopback IPv4 address")
        return sorted(set(found))
    addresses: list[str] = []
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            if not _IFNAME.match(item):
                raise ConfigError(
                    where, f"{item!r} is neither an IP address nor an interface name"
                ) from None
            found = interface_addresses(item)
        else:
            found = [item]
        if not found:
            raise ConfigError(where, f"interface {item!r} has no IPv4 address (is it up?)")
        addresses.extend(a for a in found if a not in addresses)
    return addresses


def _no_interfaces(name: str) -> list[str]:
    return []


def env_table(
    environ: Mapping[str, str],
    *,
    interface_addresses: Callable[[str], list[str]] = _no_interfaces,
) -> dict[str, Any]:
    """The TOML-shaped table set by the ``VSM_*`` variables of ``environ`` (pure).

    An empty variable counts as unset. ``VSM_NODE_ID`` falls back to balena's
    ``BALENA_DEVICE_NAME_AT_INIT`` when that is a valid node id. Raises
    :class:`ConfigError` naming the variable for an unknown ``VSM_*`` name or a
    value that cannot be read.
    """
    table: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name.startswith(RESERVED_PREFIX):
            continue
        if name in RUN_ENV_VARS:
            continue
        text = environ[name]
        var = _BY_NAME.get(name)
        if var is None:
            raise ConfigError(name, "unknown variable (see docs/deploy.md for the list)")
        limit = MAX_UNITS_VALUE if var.kind == "units" else MAX_VALUE
        if len(text) > limit:
            raise ConfigError(f"{name} ({var.key})", f"longer than {limit} characters")
        if not text.strip():
            continue
        value = _convert(var, text, interface_addresses)
        section, _, key = var.key.partition(".")
        if key:
            table.setdefault(section, {})[key] = value
        else:  # a top-level key: the [[units]] array
            table[section] = value
    device = environ.get("BALENA_DEVICE_NAME_AT_INIT", "").strip()
    if "id" not in table.get("node", {}) and _ID.match(device):
        table.setdefault("node", {})["id"] = device
    return table


def overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on it: tables merge key by key, other values replace."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = overlay(below, value)
        else:
            out[key] = value
    return out


def _read_base(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("VSM_CONFIG", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("VSM_CONFIG", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("VSM_CONFIG", f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError("VSM_CONFIG", f"{path}: invalid TOML: {NESTED_TOO_DEEPLY}") from None


def config_from_env(
    environ: Mapping[str, str],
    *,
    base_file: Path | None = None,
    interface_addresses: Callable[[str], list[str]] = _no_interfaces,
    cwd: Path | None = None,
) -> AgentConfig:
    """Validate the config made of ``base_file`` (else ``VSM_CONFIG``) and the variables.

    Relative paths are taken from the base file's folder, else ``cwd``.
    Raises :class:`ConfigError`; an error in a key set by a variable names
    the variable.
    """
    if base_file is None and environ.get("VSM_CONFIG", "").strip():
        base_file = Path(environ["VSM_CONFIG"].strip())
    base: dict[str, Any] = {}
    folder = cwd or Path.cwd()
    if base_file is not None:
        base = _read_base(base_file)
        folder = base_file.resolve().parent
    table = env_table(environ, interface_addresses=interface_addresses)
    try:
        return parse_config(overlay(base, table), base=folder)
    except ConfigError as exc:
        if "units" in table and re.match(r"units(\[|\.|$)", exc.key):
            raise ConfigError(f"VSM_UNITS ({exc.key})", exc.problem) from None
        plain = re.sub(r"\[\d+\]$", "", exc.key)  # s5.admin_keys[0] -> s5.admin_keys
        var = _BY_KEY.get(plain)
        section, _, key = plain.partition(".")
        if var is not None and key in table.get(section, {}):
            raise ConfigError(f"{var.name} ({exc.key})", exc.problem) from None
        if exc.key == "node" and "node" not in table:
            raise ConfigError("VSM_NODE_ID", "required (or [node] id in VSM_CONFIG)") from None
        raise


def interface_ipv4_addresses(name: str) -> list[str]:
    """The IPv4 addresses of the interface ``name`` on this host (ifaddr).

    ``"*"``: every non-loopback IPv4 address of every interface.
    """
    import ifaddr

    return [
        str(ip.ip)
        for adapter in ifaddr.get_adapters()
        if name in ("*", adapter.nice_name, adapter.name)
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not (name == "*" and ip.ip.startswith("127."))
    ]
