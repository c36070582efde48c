"""Every external program a test looks up is listed in scripts/programs.txt.

scripts/test.sh installs the Debian packages named there, and the session start
check in conftest.py fails under CI=true when one is missing; a program a test
runs but the list forgets would pass on a machine that happens to have it and
fail on a fresh one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import _missing_programs

TESTS = Path(__file__).parent
LOOKUP = re.compile(r"""(?:require_tool|shutil\.which)\(\s*["']([^"']+)["']""")


def listed() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in (TESTS.parent / "scripts" / "programs.txt").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            program, package, needed = fields
            rows[program] = (package, needed)
    return rows


def test_every_program_the_tests_look_up_is_listed() -> None:
    used = {
        name
        for path in TESTS.rglob("*.py")
        for name in LOOKUP.findall(path.read_text())
    }
    assert {"mosquitto_sub", "chromium", "ip"} <= used  # the scan finds lookups
    assert used - set(listed()) == set()


def test_the_list_is_well_formed() -> None:
    for program, (package, needed) in listed().items():
        assert needed in {"always", "ci"}, program
        assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", package), package


def test_missing_programs_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("shutil.which", lambda program, path=None: None)
    missing = _missing_programs(ci=True)
    assert "mosquitto_sub (Debian package mosquitto-clients)" in missing
    assert any(m.startswith("chromium ") for m in missing)
    assert not any(m.startswith("chromium ") for m in _missing_programs(ci=False))
