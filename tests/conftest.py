"""Shared test configuration."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests are bounded in count; no per-example deadline, because a
# loaded 2-core CI machine makes timings meaningless (performance lives in bench/).
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")


def _missing_programs(ci: bool) -> list[str]:
    """Programs from scripts/programs.txt not on PATH (plus /usr/sbin, /sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = []
    for line in (Path(__file__).parents[1] / "scripts" / "programs.txt").read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        program, package, needed = fields
        if (needed == "always" or ci) and shutil.which(program, path=path) is None:
            missing.append(f"{program} (Debian package {package})")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    # Under CI=true a missing program is one clear error before any test runs,
    # not a test failing deep inside (scripts/test.sh installs them as root).
    if os.environ.get("CI") == "true" and (missing := _missing_programs(ci=True)):
        pytest.exit(
            "CI=true and these programs the tests run are missing: "
            + ", ".join(missing)
            + " (bash scripts/test.sh installs them when run as root)",
            returncode=3,
        )
