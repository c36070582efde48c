"""Built-in kind ``exec``: a program's output as readings, and commands that run a program.

Every ``period_s`` the unit runs ``argv`` (a list: no shell, nothing is
interpreted) with a ``timeout_s``. Its standard output is one number (the
reading ``reading``, default ``value``) or a JSON object of numbers (one
reading per key). A non-zero exit, a timeout, output that is neither, or a
program that cannot start raises pain once, with the tail of its standard
error; the pain clears when a run succeeds again.

Commands: ``commands = {name = {argv = [...], kind = "number"}}``. Each
``"{value}"`` element of ``argv`` is replaced by the command's value as ONE
argument (a number as text, a bool as ``true``/``false``): the value is never
split, never seen by a shell. A command whose program exits non-zero is
reported failed (the unit confirms commands: ``execute_command`` returns the
outcome).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from .._errors import UnitError
from ..vsm.event import Scalar
from ..vsm.unit import Command, CommandSpec, ReadingSpec, UnitContext
from ._polled import Options, Poll, PollLoop, Value

__all__ = ["ExecUnit", "parse_output"]

MAX_OUTPUT_BYTES = 64 * 1024
STDERR_TAIL = 200  # characters of standard error in a pain reason
STDERR_BYTES = 4096  # the tail of standard error kept
MAX_READINGS = 64
PLACEHOLDER = "{value}"

_READING = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ExecError(Exception):
    """A run of the program failed: the message is one line for a pain reason."""


def parse_output(text: str, reading: str) -> dict[str, float]:
    """Readings from a program's standard output: a number, or a JSON object of numbers.

    Raises :class:`ExecError` naming what is wrong.
    """
    text = text.strip()
    if not text:
        raise ExecError("no output (expected a number or a JSON object of numbers)")
    try:
        parsed = json.loads(text)
    except ValueError:
        raise ExecError(f"output is not a number or JSON: {text[:60]!r}") from None
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return {reading: _finite(reading, parsed)}
    if not isinstance(parsed, dict):
        raise ExecError(f"output is JSON but not a number or an object: {text[:60]!r}")
    if len(parsed) > MAX_READINGS:
        raise ExecError(f"output has {len(parsed)} keys (at most {MAX_READINGS})")
    out: dict[str, float] = {}
    for key, value in parsed.items():
        if not _READING.match(key):
            raise ExecError(f"output key {key[:40]!r} is not a reading name (A-Z a-z 0-9 _ -)")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExecError(f"output key {key!r} is not a number: {value!r}")
        out[key] = _finite(key, value)
    return out


def _finite(key: str, value: float) -> float:
    if not math.isfinite(value):
        raise ExecError(f"output {key!r} is not finite")
    return float(value)


def _argv(opts: Options, key: str, value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(a, str) for a in value)
        or not value[0]
    ):
        raise opts.error(key, "must be a non-empty list of strings (the program and its arguments)")
    return list(value)


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class ExecUnit:
    """The ``exec`` kind: see the module docstring.

    Options: argv (required unless there are commands), period_s (10),
    timeout_s (5), reading ("value"), unit (""), resolution (none), cwd (none),
    env ({}: added to the agent's environment), commands ({}), pain_intensity
    (0.5), max_backoff_s (300).
    """

    confirms_commands = True

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        opts = Options(name, options)
        raw_argv = opts.get("argv")
        self.argv = None if raw_argv is None else _argv(opts, "argv", raw_argv)
        period_s = opts.number("period_s", 10.0, above=0)
        self.timeout_s = opts.number("timeout_s", 5.0, above=0, maximum=3600)
        self.reading = opts.text("reading", "value")
        if not _READING.match(self.reading):
            raise opts.error("reading", f"must be a reading name, got {self.reading!r}")
        self.unit = opts.text("unit", "")
        resolution = opts.get("resolution")
        self.resolution = None if resolution is None else opts.number("resolution", 1, above=0)
        cwd = opts.get("cwd")
        if cwd is not None and not (isinstance(cwd, str) and cwd):
            raise opts.error("cwd", "must be a directory path")
        self.cwd = Path(cwd) if cwd else None
        env = opts.get("env", {})
        if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
            raise opts.error("env", "must be a table of strings")
        self.env = {**os.environ, **{str(k): v for k, v in env.items()}} if env else None
        self.command_argv: dict[str, list[str]] = {}
        specs: list[CommandSpec] = []
        commands = opts.get("commands", {})
        if not isinstance(commands, Mapping):
            raise opts.error("commands", "must be a table: name = {argv = [...], kind = ...}")
        for cmd, spec in commands.items():
            key = f"commands.{cmd}"
            if not _READING.match(str(cmd)) or not isinstance(spec, Mapping):
                raise opts.error(key, "must be a table {argv = [...], kind = ...}")
            unknown = set(spec) - {"argv", "kind", "minimum", "maximum"}
            if unknown:
                raise opts.error(key, f"has unknown key {sorted(unknown)[0]!r}")
            argv = _argv(opts, f"{key}.argv", spec.get("argv"))
            kind = spec.get("kind", "number")
            if kind not in ("number", "bool", "text", "trigger"):
                raise opts.error(
                    f"{key}.kind", f"must be number, bool, text or trigger, got {kind!r}"
                )
            if kind == "trigger" and PLACEHOLDER in argv:
                raise opts.error(
                    f"{key}.argv", f"a trigger takes no value: leave {PLACEHOLDER} out"
                )
            bounds = []
            for b in ("minimum", "maximum"):
                v = spec.get(b)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                    raise opts.error(f"{key}.{b}", f"must be a number, got {v!r}")
                bounds.append(None if v is None else float(v))
            self.command_argv[str(cmd)] = argv
            specs.append(CommandSpec(str(cmd), kind, bounds[0], bounds[1]))
        pain = opts.number("pain_intensity", 0.5, above=0, maximum=1)
        backoff = opts.number("max_backoff_s", 300.0, above=0)
        opts.done()
        if self.argv is None and not specs:
            raise UnitError(f"unit {name}: option argv is required (or commands)")
        self.name = name
        self.readings: tuple[ReadingSpec, ...] = ()  # declared from the first output
        self.commands: tuple[CommandSpec, ...] = tuple(specs)
        self.loop = PollLoop("exec", period_s, pain_intensity=pain, max_backoff_s=backoff)
        self.last_command: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        return {**self.loop.status(), "last_command": self.last_command}

    async def run(self, ctx: UnitContext) -> None:
        async with trio.open_nursery() as nursery:
            if self.command_argv:
                nursery.start_soon(self._apply, ctx)
            if self.argv is not None:
                await self.loop.run(ctx, self._poll)

    async def _poll(self) -> Poll:
        assert self.argv is not None
        out = Poll()
        try:
            stdout = await self.execute(self.argv)
            for reading, value in parse_output(stdout, self.reading).items():
                out.values[reading] = Value(value, self.unit, self.resolution)
        except ExecError as exc:
            out.problems[self.argv[0]] = str(exc)
        return out

    async def _apply(self, ctx: UnitContext) -> None:
        async for command in ctx.commands():
            error = await self.apply(command)
            self.last_command = {"command": command.name, "value": command.value, "error": error}
            ctx.complete(command, error)

    async def apply(self, command: Command) -> str | None:
        """Run the command's program with its value; None when it exited 0, else why not."""
        template = self.command_argv.get(command.name)
        if template is None:
            return f"no command {command.name!r}"
        value = _text(command.value)
        argv = [value if a == PLACEHOLDER else a for a in template]
        try:
            await self.execute(argv)
        except ExecError as exc:
            return f"{Path(argv[0]).name}: {exc}"
        return None

    async def execute(self, argv: Sequence[str]) -> str:
        """Run ``argv`` (no shell) within ``timeout_s``; its standard output.

        Raises :class:`ExecError`, one line (the caller names the program): the
        exit code with the tail of standard error, a timeout, or why the program
        could not start.
        """
        try:
            with trio.fail_after(self.timeout_s):
                code, out, err = await self._run(argv)
        except trio.TooSlowError:
            raise ExecError(f"timed out after {self.timeout_s:g} s") from None
        except OSError as exc:
            raise ExecError(f"cannot run: {exc.strerror or exc}") from None
        if len(out) > MAX_OUTPUT_BYTES:
            raise ExecError(f"output larger than {MAX_OUTPUT_BYTES} bytes")
        if code != 0:
            tail = " ".join(err.decode("utf-8", "replace").split())[-STDERR_TAIL:]
            raise ExecError(f"exited with {code}" + (f": {tail}" if tail else ""))
        stdout = out.decode("utf-8", "replace")
        return stdout

    async def _run(self, argv: Sequence[str]) -> tuple[int, bytes, bytes]:
        """Run ``argv``; (exit code, the first MAX_OUTPUT_BYTES + 1 bytes of its
        standard output, the tail of its standard error). Both pipes are read to
        the end, so a chatty program never blocks on a full pipe and its output
        never grows the agent's memory past the bounds. Cancelled (the timeout):
        the program is killed and reaped."""
        proc = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=self.env,
        )
        out, err = bytearray(), bytearray()
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stdout is not None  # both were asked for as pipes
                assert proc.stderr is not None
                nursery.start_soon(_drain, proc.stdout, out, MAX_OUTPUT_BYTES + 1, False)
                nursery.start_soon(_drain, proc.stderr, err, STDERR_BYTES, True)
                await proc.wait()
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        await pipe.aclose()
        code = proc.returncode
        assert code is not None  # waited for above
        return code, bytes(out), bytes(err)


async def _drain(stream: trio.abc.ReceiveStream, buf: bytearray, limit: int, tail: bool) -> None:
    """Read ``stream`` to its end, keeping its first (or, with ``tail``, last) ``limit`` bytes."""
    async for chunk in stream:
        if tail:
            buf += chunk
            del buf[:-limit]
        elif len(buf) < limit:
            buf += chunk[: limit - len(buf)]
