"""Reading TOML into :class:`~vsm_edge.agent.config.schema.AgentConfig`.

Every problem raises :class:`ConfigError` naming the dotted key, e.g.
``config error: s3.budgets.s1.capacity: must be > 0, got -1``. Unknown keys are
errors too (a typo must not silently fall back to a default). The schema is
documented in docs/configuration.md; examples/node.toml is a complete example.

Theory of operation: one generic reader walks a dataclass's fields. A field's
type says how its value is read (a boolean, an integer, a number, a string, a
path relative to the config file, a list of strings, an enum's value, a
sub-table for a nested dataclass, a table per subsystem, a free table); its
default is the dataclass's (a table absent or a key absent keeps it); its
:class:`~vsm_edge.agent._limits.Limits` say what to refuse, including
comparisons with another field of the same table. Adding a setting is adding
a field. What the types cannot say is read by hand below: ``broker.tls``
(its default follows the url), ``s5.admin_keys`` (hex keys), ``[[units]]``
(unique names; a ``file.py:Class`` kind made relative to the config file) and
:func:`_check_security` (across sections).
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import ConfigError
from .._limits import Limits, limits_of
from ..vsm.event import Subsystem
from ..vsm.settings import S5Config, UnitConfig
from ..vsm.unit import file_kind
from .schema import AgentConfig, BrokerConfig, SecurityConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["MAX_CONFIG_BYTES", "load_config", "parse_config"]

MAX_CONFIG_BYTES = 1 << 20
NESTED_TOO_DEEPLY = "arrays or tables nested too deeply"


def parse_config(data: Mapping[str, Any], *, base: Path | None = None) -> AgentConfig:
    """Validate a parsed TOML mapping. Relative paths are taken from ``base`` (default: cwd).

    Raises :class:`ConfigError` naming the first bad key.
    """
    root = _Table(data, "")
    if not root.has("node"):
        raise ConfigError("node", "required table missing ([node] with at least id)")
    config = _section(root, AgentConfig, base or Path.cwd())
    _check_security(config.security, config.s5)
    return config


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML file (relative paths in it are relative to the file).

    Raises :class:`ConfigError` (unreadable file, bad TOML, or a bad key).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError("", f"{path}: invalid TOML: {NESTED_TOO_DEEPLY}") from None
    config = parse_config(data, base=path.resolve().parent)
    return dataclasses.replace(config, source=path)


# -- one TOML table -----------------------------------------------------------------


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )


class _Table:
    """One TOML table being read; remembers which keys were used."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a table, got {_type_name(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self.key(name))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


# -- the generic reader -------------------------------------------------------------

T = TypeVar("T", bound="DataclassInstance")
_Special = Callable[[_Table, str, Mapping[str, Any], Path], Any]


def _section(t: _Table, cls: type[T], base: Path, defaults: T | None = None) -> T:
    """Read table ``t`` into dataclass ``cls``, field by field (defaults: the
    dataclass's, or those of the instance ``defaults``); then refuse unknown keys."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        special = _SPECIAL.get((cls, f.name))
        if special is not None:
            values[f.name] = special(t, f.name, values, base)
            continue
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        values[f.name] = _field(t, f.name, hints[f.name], default, limits_of(f), base)
    _compare(t, cls, values)
    t.done()
    return cls(**values)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _field(t: _Table, name: str, tp: Any, default: Any, lim: Limits, base: Path) -> Any:
    """One field: a sub-table, a table per subsystem, a free table, or a value."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _section(t.table(name), tp, base, default if isinstance(default, tp) else None)
    if typing.get_args(tp)[:1] == (Subsystem,):  # Mapping[Subsystem, X]
        return _per_subsystem(t.table(name), default, typing.get_args(tp)[1], lim, base)
    if tp == Mapping[str, Any]:  # a free table (unit options), passed on as it is
        free = t.table(name)
        free.used.update(free.data)
        return types.MappingProxyType(dict(free.data))
    key = t.key(name)
    raw = t.raw(name)
    if raw is None:
        if default is dataclasses.MISSING:
            raise ConfigError(key, "required")
        value = _resolve(default, base)
    else:
        value = _convert(key, raw, tp, base)
    _check(key, value, lim)
    return value


def _per_subsystem(
    t: _Table, defaults: Mapping[Subsystem, Any], item: Any, lim: Limits, base: Path
) -> Mapping[Subsystem, Any]:
    """A table per subsystem; the subsystems allowed are those of the default."""
    out = dict(defaults)
    names = {str(s): s for s in defaults}
    for name in list(t.data):
        if name not in names:
            raise ConfigError(t.key(name), f"unknown subsystem (known: {', '.join(names)})")
        sub = names[name]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            out[sub] = _section(t.table(name), item, base, defaults[sub])
        else:
            out[sub] = _field(t, name, item, defaults[sub], lim, base)
    t.done()
    return types.MappingProxyType(out)


def _resolve(value: Any, base: Path) -> Any:
    """A relative path is relative to the config file (a default too)."""
    if isinstance(value, Path) and not value.is_absolute():
        return base / value
    return value


def _convert(key: str, raw: object, tp: Any, base: Path) -> Any:
    """A present value read as type ``tp``, or :class:`ConfigError` naming ``key``."""
    args = typing.get_args(tp)
    if type(None) in args:  # X | None: present, so an X ("" is None for a string)
        (inner,) = (a for a in args if a is not type(None))
        value = _convert(key, raw, inner, base)
        return None if value == "" else value
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(key, f"expected true or false, got {_type_name(raw)}")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(key, f"expected an integer, got {_type_name(raw)}")
        return raw
    if tp is float:
        return _number(key, raw)
    if typing.get_origin(tp) is tuple and args == (str, ...):
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise ConfigError(key, "expected a list of strings")
        return tuple(raw)
    if typing.get_origin(tp) is tuple and args == (Path, ...):
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            raise ConfigError(key, "expected a list of paths (non-empty strings)")
        return tuple(_resolve(Path(v), base) for v in raw)
    if not isinstance(raw, str):
        raise ConfigError(key, f"expected a string, got {_type_name(raw)}")
    if tp is str:
        return raw
    if tp is Path:
        return _resolve(Path(raw), base)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [str(member.value) for member in tp]
        if raw not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {raw!r}")
        return tp(raw)
    raise TypeError(f"{key}: no reader for the type {tp!r}")


def _number(key: str, raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigError(key, f"expected a number, got {_type_name(raw)}")
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(key, f"must be finite, got {value}")
    return value


def _check(key: str, value: Any, lim: Limits) -> None:
    """Refuse a value outside its limits (each item of a list)."""
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            _check(f"{key}[{i}]", item, lim)
        return
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lim.above is not None and not value > lim.above:
            raise ConfigError(key, f"must be > {_fmt(lim.above)}, got {_fmt(value)}")
        if lim.minimum is not None and value < lim.minimum:
            raise ConfigError(key, f"must be >= {_fmt(lim.minimum)}, got {_fmt(value)}")
        if lim.maximum is not None and value > lim.maximum:
            raise ConfigError(key, f"must be <= {_fmt(lim.maximum)}, got {_fmt(value)}")
    if lim.check is not None and value is not None:
        problem = lim.check(value)
        if problem is not None:
            raise ConfigError(key, problem)


def _compare(t: _Table, cls: type[Any], values: Mapping[str, Any]) -> None:
    """The limits that name another field of the same table."""
    for f in dataclasses.fields(cls):
        lim, value = limits_of(f), values[f.name]
        if lim.at_least is not None and value < values[lim.at_least]:
            other = values[lim.at_least]
            raise ConfigError(
                t.key(f.name),
                f"must be >= {lim.at_least} ({_fmt(other)}), got {_fmt(value)}",
            )
        if lim.less_than is not None and value >= values[lim.less_than]:
            other = values[lim.less_than]
            raise ConfigError(
                t.key(f.name),
                f"must be < {lim.less_than} ({_fmt(other)}), got {_fmt(value)}",
            )


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# -- read by hand -------------------------------------------------------------------


def _broker_tls(t: _Table, name: str, values: Mapping[str, Any], base: Path) -> Any:
    url: str = values["url"]
    return _field(t, name, bool, url.startswith("mqtts://"), Limits(), base)


def _admin_keys(t: _Table, name: str, values: Mapping[str, Any], base: Path) -> Any:
    keys: list[bytes] = []
    for i, text in enumerate(_field(t, name, tuple[str, ...], (), Limits(), base)):
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError(
                t.key(f"{name}[{i}]"), "expected 64 hex digits (an Ed25519 public key)"
            )
        keys.append(key)
    return tuple(keys)


def _units(t: _Table, name: str, values: Mapping[str, Any], base: Path) -> Any:
    raw = t.raw(name)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(t.key(name), "expected an array of tables ([[units]])")
    units: list[UnitConfig] = []
    for i, item in enumerate(raw):
        unit: UnitConfig = _section(_Table(item, f"{t.key(name)}[{i}]"), UnitConfig, base)
        in_file = file_kind(unit.kind)
        if in_file is not None:  # file.py:Class is relative to the config file
            file, attr = in_file
            unit = dataclasses.replace(unit, kind=f"{_resolve(file, base)}:{attr}")
        if any(u.name == unit.name for u in units):
            raise ConfigError(f"{t.key(name)}[{i}].name", f"duplicate unit name {unit.name!r}")
        units.append(unit)
    return tuple(units)


def _not_in_toml(t: _Table, name: str, values: Mapping[str, Any], base: Path) -> Any:
    return None  # AgentConfig.source: set by load_config, a TOML key "source" is unknown


_SPECIAL: Mapping[tuple[type[Any], str], _Special] = {
    (BrokerConfig, "tls"): _broker_tls,
    (S5Config, "admin_keys"): _admin_keys,
    (AgentConfig, "units"): _units,
    (AgentConfig, "source"): _not_in_toml,
}


def _check_security(security: SecurityConfig, s5: S5Config) -> None:
    if security.zone == "policy":
        # Fail closed must not mean closed for ever: say what can never arrive.
        if not s5.admin_keys:
            raise ConfigError(
                "security.zone", '"policy" needs s5.admin_keys (who may sign the zone)'
            )
        if security.mesh_secret_file is None:
            raise ConfigError(
                "security.zone", '"policy" needs security.mesh_secret_file (it keys the zone)'
            )
    if security.previous_mesh_secret_file is not None and security.mesh_secret_file is None:
        raise ConfigError("security.previous_mesh_secret_file", "needs mesh_secret_file too")
