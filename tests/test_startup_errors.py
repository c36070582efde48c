"""Every startup failure of the command line is one line on stderr naming the cause and the fix.

Real processes (``python -m vsm_edge.agent``): exit code non-zero, exactly one
line, no traceback, and the config key or file to fix named in it. Each case
fails before the agent needs its broker (``mqtt://127.0.0.1:1``, nothing there).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vsm_edge.sync import Store

TIMEOUT_S = 60  # a bound on one case; each fails within a second or two

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(AS_ROOT, reason="root reads and writes any file")


def write_config(tmp: Path, *, node: str = "", broker: str = "", extra: str = "") -> list[str]:
    (tmp / "node.toml").write_text(
        f'[node]\nid = "n1"\ndata_dir = "{tmp / "data"}"\n{node}\n'
        "[discovery]\nenabled = false\n"
        f'[broker]\nurl = "mqtt://127.0.0.1:1"\n{broker}\n'
        f"[status]\nport = 0\n{extra}\n"
    )
    return ["run", "--config", str(tmp / "node.toml")]


def key_file(tmp: Path, text: str | None, mode: int = 0o600) -> list[str]:
    key = tmp / "node.key"
    if text is not None:
        key.write_text(text)
        key.chmod(mode)
    return write_config(tmp, node=f'key_file = "{key}"')


def key_dir(tmp: Path) -> list[str]:
    (tmp / "node.key").mkdir()
    return write_config(tmp, node=f'key_file = "{tmp / "node.key"}"')


def data_dir_is_a_file(tmp: Path) -> list[str]:
    (tmp / "data").write_text("not a directory")
    return write_config(tmp)


def data_dir_uncreatable(tmp: Path) -> list[str]:
    (tmp / "node.toml").write_text(
        '[node]\nid = "n1"\ndata_dir = "/proc/1/vsm-edge-data"\n'
        '[discovery]\nenabled = false\n[broker]\nurl = "mqtt://127.0.0.1:1"\n[status]\nport = 0\n'
    )
    return ["run", "--config", str(tmp / "node.toml")]


def data_dir_on_procfs(tmp: Path) -> list[str]:
    # a directory that exists and that no one, root included, can create files in
    (tmp / "node.toml").write_text(
        '[node]\nid = "n1"\ndata_dir = "/proc/1"\n'
        '[discovery]\nenabled = false\n[broker]\nurl = "mqtt://127.0.0.1:1"\n[status]\nport = 0\n'
    )
    return ["run", "--config", str(tmp / "node.toml")]


def data_dir_unwritable(tmp: Path) -> list[str]:
    (tmp / "data").mkdir(mode=0o500)
    return write_config(tmp)


def status_port_in_use(tmp: Path, taken: int) -> list[str]:
    argv = write_config(tmp)
    text = (tmp / "node.toml").read_text().replace("port = 0", f"port = {taken}")
    (tmp / "node.toml").write_text(text)
    return argv


Case = Callable[[Path], list[str]]

# name -> (setup returning argv, what the line must name)
CASES: dict[str, tuple[Case, list[str]]] = {
    "key file missing": (lambda t: key_file(t, None), ["node.key_file", "node.key", "keygen"]),
    "key file unreadable": (lambda t: key_file(t, "00" * 32, 0o000), ["node.key_file"]),
    "key file 0644": (lambda t: key_file(t, "00" * 32, 0o644), ["node.key", "chmod 600"]),
    "key file a directory": (key_dir, ["node.key_file", "Is a directory"]),
    "key file bad hex": (lambda t: key_file(t, "zz" * 32), ["node.key", "64 hex digits"]),
    "data dir a file": (data_dir_is_a_file, ["node.data_dir", "data"]),
    "data dir uncreatable": (data_dir_uncreatable, ["node.data_dir", "/proc/1/vsm-edge-data"]),
    "data dir unwritable": (data_dir_unwritable, ["node.data_dir"]),
    "data dir not writable (procfs)": (data_dir_on_procfs, ["node.data_dir", "/proc/1/node.key"]),
    "password_file missing": (
        lambda t: write_config(t, broker=f'username = "u"\npassword_file = "{t / "pw"}"'),
        ["broker.password_file", "pw"],
    ),
    "ca_file missing": (
        lambda t: write_config(t, broker=f'tls = true\nca_file = "{t / "ca.pem"}"'),
        ["broker.ca_file", "ca.pem"],
    ),
    "mesh secret missing": (
        lambda t: write_config(t, extra=f'[security]\nmesh_secret_file = "{t / "secret"}"'),
        ["security.mesh_secret_file", "secret"],
    ),
    "mesh key missing": (
        lambda t: write_config(t, extra=f'[security]\nmesh_key_file = "{t / "mesh.key"}"'),
        ["security.mesh_key_file", "mesh.key"],
    ),
    "policy_file missing": (
        lambda t: write_config(t, extra=f'[s5]\npolicy_file = "{t / "policy.cose"}"'),
        ["s5.policy_file", "policy.cose"],
    ),
    "policy_file garbage": (
        lambda t: (
            (t / "policy.cose").write_bytes(b"garbage"),
            write_config(t, extra=f'[s5]\npolicy_file = "{t / "policy.cose"}"'),
        )[1],
        ["s5.policy_file", "policy.cose", "refused", "not valid CBOR", "policy sign"],
    ),
    "arbitrator_model missing": (
        lambda t: write_config(t, extra=f'[security]\narbitrator_model = "{t / "m.tflite"}"'),
        ["security.arbitrator_model", "m.tflite", "train_arbitrator"],
    ),
    "unit kind unknown": (
        lambda t: write_config(t, extra='[[units]]\nname = "u"\nkind = "nope"\n'),
        ["unit u: unknown unit kind 'nope'"],
    ),
    "unit options bad": (
        lambda t: write_config(
            t, extra='[[units]]\nname = "u"\nkind = "simulated-sensor"\noptions = {period_s = -1}\n'
        ),
        ["unit u", "period_s"],
    ),
    "keygen into a missing directory": (
        lambda t: ["keygen", "--out", "/nonexistent/dir/x"],
        ["/nonexistent/dir/x", "--out"],
    ),
    "status endpoint malformed": (
        lambda t: ["status", "--endpoint", "http://[::1"],
        ["http://[::1", "HOST:PORT"],
    ),
}
ROOT_ONLY_PASSES = {"key file unreadable", "data dir unwritable"}


def vsm_edge(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", *argv],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for path in [tmp_path, *tmp_path.rglob("*")]:  # let pytest remove what a case locked
        if not path.is_symlink():
            path.chmod(0o700)


def assert_one_line(proc: subprocess.CompletedProcess[str], command: str, names: list[str]) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    [line] = lines
    assert line.startswith(f"vsm-edge {command}: ")
    assert "Traceback" not in line
    for name in names:
        assert name in line
    return line


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(name, marks=needs_non_root) if name in ROOT_ONLY_PASSES else name
        for name in CASES
    ],
)
def test_a_startup_failure_is_one_line_naming_the_fix(tmp: Path, case: str) -> None:
    setup, names = CASES[case]
    argv = setup(tmp)
    assert_one_line(vsm_edge(*argv), argv[0], names)


def test_a_status_port_in_use_names_the_key_and_port_zero(tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = vsm_edge(*status_port_in_use(tmp, port))
    line = assert_one_line(proc, "run", ["[status] port", "port = 0", f"127.0.0.1:{port}"])
    assert "Address already in use" in line


def test_a_database_in_use_names_the_data_dir(tmp: Path) -> None:
    argv = write_config(tmp)
    (tmp / "data").mkdir()
    with Store.open(tmp / "data" / "node.db"):  # as another agent would hold it
        proc = vsm_edge(*argv)
    assert_one_line(proc, "run", ["node.db", "in use", "[node] data_dir"])


def test_debug_adds_the_traceback_and_still_ends_with_the_line(tmp: Path) -> None:
    argv = write_config(tmp, extra=f'[s5]\npolicy_file = "{tmp / "policy.cose"}"')
    proc = vsm_edge(*argv, "--debug")
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("Traceback")
    assert "FileNotFoundError" in proc.stderr
    assert lines[-1].startswith("vsm-edge run: config error: s5.policy_file: cannot read")
