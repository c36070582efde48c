"""deploy/balena: the files balena builds from, checked without a Docker engine.

What can be checked here is checked: the YAML parses; docker-compose.yml keeps
to the Compose 2.4 subset balena's supervisor supports (its documented field
list: named volumes only, no variable substitution, no container_name, network
modes, array depends_on); the Dockerfile picks a balenalib base by
%%BALENA_ARCH%%, runs as a non-root user, has a HEALTHCHECK and an exec-form
CMD; every variable the files set is one the agent (or the broker's
entrypoint) reads; and the broker's entrypoint writes a config that the real
Mosquitto accepts, including the bridge, which carries vsm/# between two real
brokers. Devices: the default maps none (a missing host path would stop the
container from being created), and the commented examples, uncommented, are
valid balena compose. Custom unit code: deploy/balena/units/ is copied onto
the image's PYTHONPATH, and a unit module in such a folder runs from VSM_UNITS
in a real agent process. Building the images needs Docker and the balenalib
registry: not here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.brokers import (  # noqa: F401
    Mosquitto,
    find_mosquitto,
    free_port,
    mosquitto,
    mosquitto_factory,
    require_tool,
    wait_for_port,
)
from support.env_agent import env_agent

from vsm_edge.agent.config.env import ENV_VARS, RUN_ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
BALENA = ROOT / "deploy" / "balena"

# docs.balena.io/reference/supervisor/docker-compose: "Supported fields".
SUPPORTED_SERVICE_FIELDS = {
    "build", "cap_add", "cap_drop", "cgroup_parent", "command", "cpu_shares", "cpu_quota",
    "cpuset", "devices", "depends_on", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "environment", "expose", "extra_hosts", "group_add", "healthcheck",
    "hostname", "image", "ipc", "labels", "mac_address", "mem_limit", "mem_reservation",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "ports", "privileged", "read_only", "restart", "security_opt", "shm_size",
    "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "ulimits", "user", "userns_mode",
    "volumes", "working_dir",
}  # fmt: skip
SUPPORTED_BUILD_FIELDS = {
    "context", "dockerfile", "args", "cache_from", "extra_hosts", "labels", "shm_size", "target",
}  # fmt: skip
NETWORK_MODES = {"bridge", "host", "none"}
BROKER_VARS = {
    "MQTT_LISTEN", "MQTT_PORT", "MQTT_DATA_DIR", "MQTT_BRIDGE_ADDRESS", "MQTT_BRIDGE_CLIENT_ID",
    "MQTT_BRIDGE_USERNAME", "MQTT_BRIDGE_PASSWORD", "MQTT_BRIDGE_CAFILE", "MOSQUITTO_CONF_DIR",
    "MOSQUITTO_BIN",
}  # fmt: skip
AGENT_VARS = {v.name for v in ENV_VARS} | set(RUN_ENV_VARS)


def _yaml(name: str) -> Any:
    return yaml.safe_load((BALENA / name).read_text())


def _env_names(environment: Any) -> set[str]:
    if isinstance(environment, dict):
        return set(environment)
    return {str(item).split("=", 1)[0] for item in environment or []}


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# -- docker-compose.yml ------------------------------------------------------------------


def test_compose_is_the_2_4_subset_balena_supports() -> None:
    compose = _yaml("docker-compose.yml")
    assert str(compose["version"]).startswith("2"), "balena reads Compose 2.x (2.4)"
    assert set(compose) <= {"version", "services", "volumes", "networks"}
    raw = (BALENA / "docker-compose.yml").read_text()
    assert "${" not in raw, "no variable substitution"
    assert not re.search(r"\$[A-Za-z_]", raw), "no variable substitution"
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        unsupported = set(service) - SUPPORTED_SERVICE_FIELDS
        assert not unsupported, f"{name}: fields balena does not support: {unsupported}"
        build = service.get("build")
        if build is not None:
            if isinstance(build, dict):
                assert set(build) <= SUPPORTED_BUILD_FIELDS, name
                context = build.get("context", ".")
            else:
                context = build
            path = Path(context)
            message = f"{name}: build context must be a subfolder of the project"
            assert not path.is_absolute(), message
            assert ".." not in path.parts, message
            assert "://" not in context, message
            folder = BALENA / path
            assert (folder / "Dockerfile.template").exists() or (folder / "Dockerfile").exists()
        for volume in service.get("volumes", []):
            assert isinstance(volume, str), f"{name}: volumes take the short syntax only"
            source = volume.split(":", 1)[0]
            assert not source.startswith(("/", ".", "~")), f"{name}: bind mount {volume!r}"
            assert source in declared, f"{name}: volume {source!r} is not declared"
        mode = service.get("network_mode")
        assert mode is None or mode in NETWORK_MODES or mode.startswith("service:"), name
        assert isinstance(service.get("depends_on", []), list), "depends_on: array form only"


def test_agent_service_has_host_network_no_required_device_and_a_named_volume() -> None:
    agent = _yaml("docker-compose.yml")["services"]["agent"]
    assert agent["network_mode"] == "host"  # mDNS multicast reaches the LAN
    # no device by default: an entry whose host path is missing (no USB adapter
    # plugged in) stops the engine from creating the container at all
    assert "devices" not in agent
    assert "privileged" not in agent
    assert "dialout" in agent["group_add"]
    assert "vsm-data:/data" in agent["volumes"]
    assert agent["environment"]["VSM_DATA_DIR"] == "/data"
    assert "mosquitto" in agent["depends_on"]
    # SIGTERM, 5 s of graceful shutdown inside a longer grace period
    assert agent["stop_signal"] == "SIGTERM"
    grace = agent["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > 5


_EXAMPLE = re.compile(r'^    # (devices:|  - "/dev/|privileged: )')


def test_commented_device_examples_are_valid_balena_compose() -> None:
    raw = (BALENA / "docker-compose.yml").read_text()
    lines = raw.splitlines()
    examples = [line for line in lines if _EXAMPLE.match(line)]
    assert examples, "the compose file shows how to map devices"
    uncommented = "\n".join(
        line.replace("    # ", "    ", 1) if _EXAMPLE.match(line) else line for line in lines
    )
    agent = yaml.safe_load(uncommented)["services"]["agent"]
    assert set(agent) <= SUPPORTED_SERVICE_FIELDS
    assert agent["privileged"] is True
    paths = []
    for entry in agent["devices"]:
        host, container = entry.split(":")
        assert host == container, "the same path inside: a unit's device option is unchanged"
        assert host.startswith("/dev/")
        paths.append(host)
    assert any(p.startswith("/dev/serial/by-id/") for p in paths)
    for prefix in ("/dev/i2c-", "/dev/gpiochip", "/dev/spidev"):
        assert any(p.startswith(prefix) for p in paths), prefix
    assert "device_cgroup_rules" not in SUPPORTED_SERVICE_FIELDS  # why the docs do not use it
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for word in ("privileged", "io.balena.features", "device_cgroup_rules", "/dev/serial/by-id/"):
        assert word in doc, word


def test_every_variable_set_by_the_files_is_read_by_someone() -> None:
    compose = _yaml("docker-compose.yml")
    agent_env = _env_names(compose["services"]["agent"].get("environment"))
    broker_env = _env_names(compose["services"]["mosquitto"].get("environment"))
    assert agent_env <= AGENT_VARS, agent_env - AGENT_VARS
    assert broker_env <= BROKER_VARS, broker_env - BROKER_VARS
    balena = _yaml("balena.yml")
    fleet = set()
    for item in balena["data"]["applicationEnvironmentVariables"]:
        assert isinstance(item, dict), "one NAME: default per item"
        assert len(item) == 1, "one NAME: default per item"
        fleet |= set(item)
    assert fleet <= AGENT_VARS | BROKER_VARS, fleet - AGENT_VARS - BROKER_VARS
    for line in (BALENA / "mosquitto" / "entrypoint.sh").read_text().splitlines():
        for var in re.findall(r"\$\{?(MQTT_[A-Z_]+|MOSQUITTO_[A-Z_]+)", line):
            assert var in BROKER_VARS, var


def test_balena_yml_names_the_application() -> None:
    balena = _yaml("balena.yml")
    assert balena["name"] == "vsm-edge"
    assert balena["type"] == "sw.application"
    assert len(balena["description"]) > 40
    data = balena["data"]
    assert data["defaultDeviceType"] in data["supportedDeviceTypes"]


# -- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["Dockerfile.template", "mosquitto/Dockerfile.template"])
def test_dockerfile_uses_balenalib_by_arch_a_user_and_a_healthcheck(path: str) -> None:
    instructions = _dockerfile(BALENA / path)
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert bases
    assert all(
        re.match(r"^balenalib/%%BALENA_ARCH%%-debian(-python:3\.1[1-9])?(:|-)", b) for b in bases
    ), bases
    users = [rest for word, rest in instructions if word == "USER"]
    assert users
    assert users[-1] not in ("root", "0"), "the last USER must not be root"
    health = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert len(health) == 1
    assert "CMD" in health[0]
    cmds = [rest for word, rest in instructions if word == "CMD"]
    assert len(cmds) == 1
    assert cmds[0].startswith("["), "exec form: SIGTERM reaches the process"
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    folder = (BALENA / path).parent
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                if source.startswith("dist"):  # made by prepare.sh before a push
                    assert '--wheel-dir "$here/dist"' in (BALENA / "prepare.sh").read_text()
                else:
                    assert (folder / source).exists(), source


def test_agent_image_runs_the_agent_from_the_environment() -> None:
    instructions = _dockerfile(BALENA / "Dockerfile.template")
    cmd = next(rest for word, rest in instructions if word == "CMD")
    assert yaml.safe_load(cmd) == ["vsm-edge", "run", "--env"]
    health = next(rest for word, rest in instructions if word == "HEALTHCHECK")
    assert "/health" in health
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "useradd" in runs
    assert "dialout" in runs
    prepare = (BALENA / "prepare.sh").read_text()
    assert "pip wheel" in prepare
    assert '"$here/dist"' in prepare


def test_custom_unit_code_has_a_place_in_the_image() -> None:
    instructions = _dockerfile(BALENA / "Dockerfile.template")
    copies = [shlex.split(rest) for word, rest in instructions if word == "COPY"]
    assert ["units/", "/usr/src/app/units/"] in copies
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "PYTHONPATH=/usr/src/app/units" in env.split()
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "/tmp/units/requirements.txt" in runs  # the units' own libraries
    assert (BALENA / "units" / "README.md").exists()
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "/usr/src/app/units" in doc
    assert "plugin_dirs" in doc


def test_healthcheck_command_of_the_agent_image_is_valid_python() -> None:
    instructions = _dockerfile(BALENA / "Dockerfile.template")
    health = next(rest for word, rest in instructions if word == "HEALTHCHECK")
    argv = yaml.safe_load(health[health.index("CMD") + 3 :].strip())
    assert argv[:2] == ["python3", "-c"]
    compile(argv[2], "<healthcheck>", "exec")


# -- the device broker, for real -------------------------------------------------------------


def _entrypoint_env(tmp: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MOSQUITTO_CONF_DIR": str(tmp / "config"),
        "MQTT_DATA_DIR": str(tmp / "data"),
        "MQTT_LISTEN": "127.0.0.1",
        "MQTT_PORT": str(port),
        "MOSQUITTO_BIN": find_mosquitto(),
        **extra,
    }
    return env


def _start_entrypoint(tmp: Path, port: int, **extra: str) -> subprocess.Popen[bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["sh", str(BALENA / "mosquitto" / "entrypoint.sh")],
        env=_entrypoint_env(tmp, port, **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc=proc)
    except (TimeoutError, RuntimeError):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(err.decode(errors="replace")) from None
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def _with_root_user(tmp: Path) -> dict[str, str]:
    # Run as root, Mosquitto switches to the user "mosquitto", who cannot write
    # the test's files: a wrapper adds "user root" for this run only (the image
    # runs it as the user mosquitto).
    wrapper = tmp / "mosquitto-as-root"
    wrapper.write_text(
        f'#!/bin/sh\nconf="$2"; echo "user root" >> "$conf"\nexec {find_mosquitto()} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {"MOSQUITTO_BIN": str(wrapper)} if os.geteuid() == 0 else {}


@pytest.mark.integration
def test_broker_entrypoint_config_runs_a_real_mosquitto(tmp_path: Path) -> None:
    sub = require_tool("mosquitto_sub", "/usr/bin/mosquitto_sub")
    port = free_port()
    proc = _start_entrypoint(tmp_path / "a", port, **_with_root_user(tmp_path))
    try:
        conf = (tmp_path / "a" / "config" / "mosquitto.conf").read_text()
        assert f"listener {port} 127.0.0.1" in conf
        assert "\nconnection " not in conf  # no bridge without MQTT_BRIDGE_ADDRESS
        # the image's HEALTHCHECK: a retained $SYS topic answers at once
        started = time.monotonic()
        check = subprocess.run(
            [sub, "-h", "127.0.0.1", "-p", str(port), "-t", "$SYS/broker/uptime", "-C", "1",
             "-W", "4"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        assert time.monotonic() - started < 4
    finally:
        _stop(proc)


@pytest.mark.integration
def test_broker_entrypoint_bridges_vsm_topics_to_the_site_broker(
    tmp_path: Path,
) -> None:
    sub = require_tool("mosquitto_sub", "/usr/bin/mosquitto_sub")
    pub = require_tool("mosquitto_pub", "/usr/bin/mosquitto_pub")
    site_port, device_port = free_port(), free_port()
    site = _start_entrypoint(tmp_path / "site", site_port, **_with_root_user(tmp_path))
    device = _start_entrypoint(
        tmp_path / "device",
        device_port,
        MQTT_BRIDGE_ADDRESS=f"127.0.0.1:{site_port}",
        MQTT_BRIDGE_CLIENT_ID="bridge-test",
        **_with_root_user(tmp_path),
    )
    try:
        # what a device's agent publishes on its own broker reaches the site's
        listener = subprocess.Popen(
            [sub, "-h", "127.0.0.1", "-p", str(site_port), "-t", "vsm/#", "-C", "1", "-W", "15",
             "-v"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.3)
        deadline = time.monotonic() + 12
        while listener.poll() is None and time.monotonic() < deadline:
            subprocess.run(
                [pub, "-h", "127.0.0.1", "-p", str(device_port), "-t", "vsm/m/d/n1", "-m",
                 "hello", "-q", "1"],
                capture_output=True, timeout=5, check=False,
            )  # fmt: skip
            time.sleep(0.3)
        out, err = listener.communicate(timeout=5)
        assert out.decode().strip() == "vsm/m/d/n1 hello", err
        # and a topic outside vsm/# stays on the device
        conf = (tmp_path / "device" / "config" / "mosquitto.conf").read_text()
        assert "topic vsm/# both 1" in conf
        assert "remote_clientid bridge-test" in conf
    finally:
        _stop(device)
        _stop(site)


def test_broker_entrypoint_rejects_a_bad_port(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["sh", str(BALENA / "mosquitto" / "entrypoint.sh")],
        env=_entrypoint_env(tmp_path, 0, MQTT_PORT="18x3", MOSQUITTO_BIN="/bin/false"),
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert b"MQTT_PORT must be a number" in proc.stderr


UNIT_MODULE = """
import trio

from vsm_edge.agent import ReadingSpec, unit


@unit(readings=[ReadingSpec("lux", unit="lx")])
async def lux(ctx):
    while True:
        ctx.emit("lux", 420.0)
        await trio.sleep(0.2)
"""


@pytest.mark.integration
def test_a_unit_module_in_the_units_folder_runs_from_vsm_units(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The image's layout, on this host: a folder on PYTHONPATH holding a unit module."""
    instructions = _dockerfile(BALENA / "Dockerfile.template")
    env_words = " ".join(rest for word, rest in instructions if word == "ENV").split()
    assert "PYTHONPATH=/usr/src/app/units" in env_words
    units = tmp_path / "usr-src-app-units"  # stands for /usr/src/app/units
    units.mkdir()
    (units / "greenhouse_units.py").write_text(UNIT_MODULE)
    env = {
        "PYTHONPATH": str(units),
        "VSM_NODE_ID": "bal1",
        "VSM_MESH": "balena",
        "VSM_DATA_DIR": str(tmp_path / "data"),
        "VSM_BROKER_URL": mosquitto.url,
        "VSM_DISCOVERY_ENABLED": "false",
        "VSM_STATUS_PORT": "0",
        "VSM_UNITS": '[{"name": "lux", "kind": "greenhouse_units:lux"}]',
    }
    with env_agent(env, tmp_path / "data", tmp_path) as status:
        deadline = time.monotonic() + 30
        while True:
            unit = status()["s1"]["units"].get("lux", {})
            if unit.get("emitted", 0) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert unit.get("kind") == "greenhouse_units:lux", unit
        assert unit["state"] == "running", unit
        assert unit["emitted"] > 0, unit  # the module's readings flow
