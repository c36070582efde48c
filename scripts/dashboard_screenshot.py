"""Makes docs/img/dashboard.png: a one-minute mesh watched by the aggregator.

Five agents (separate processes) on a real Mosquitto; n2's temperature sensor
floods from 25 s (S3 attenuates it, S4 sees the variety overflow); at 50 s an
operator raises a critical alarm on n1; at 60 s headless Chromium takes a
screenshot of the aggregator's dashboard. Prints the aggregator's replication
lag figures. Run from the repository root, after `bash scripts/test.sh` made
the venv:

    .venv/bin/python scripts/dashboard_screenshot.py [OUT.png]
"""

# ruff: noqa: S603, S607, S310 - a developer's script: fixed argv, loopback URLs

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.brokers import Mosquitto  # noqa: E402

MESH = "greenhouse"


def config(node: str, data: Path, broker: str, flood: bool) -> str:
    extra = "flood_rate = 300.0\nflood_after_s = 25.0\n" if flood else ""
    return f"""[node]
id = "{node}"
mesh = "{MESH}"
data_dir = "{data}"
[broker]
url = "{broker}"
[discovery]
enabled = false
[status]
port = 0
[[units]]
name = "temp"
kind = "simulated-sensor"
[units.options]
reading = "celsius"
mean = 21.5
noise = 0.6
period_s = 0.2
resolution = 0.5
{extra}
[[units]]
name = "humidity"
kind = "simulated-sensor"
[units.options]
reading = "percent"
mean = 45.0
noise = 3.0
period_s = 0.5
resolution = 2.0
"""


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img" / "dashboard.png")
    work = Path(tempfile.mkdtemp(prefix="vsm-shot-"))
    broker = Mosquitto(work)
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(1, 6):
            node = f"n{i}"
            (work / node).mkdir()
            (work / f"{node}.toml").write_text(config(node, work / node, broker.url, node == "n2"))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vsm_edge.agent", "run", "--config",
                 str(work / f"{node}.toml")], stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        port_file = work / "aggregator.port"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vsm_edge.agent", "aggregate", "--broker", broker.url,
             "--mesh", MESH, "--id", "site-aggregator", "--http", "127.0.0.1:0",
             "--port-file", str(port_file)], stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        while not (port_file.exists() and port_file.read_text().strip()):
            time.sleep(0.2)
        port = int(port_file.read_text())
        time.sleep(50)
        n1 = int((work / "n1" / "status.port").read_text())
        body = {"intensity": 0.97, "source": "estop", "reason": "emergency stop pressed"}
        request = urllib.request.Request(
            f"http://127.0.0.1:{n1}/alarm", data=json.dumps(body).encode(),
            headers={"content-type": "application/json"}, method="POST",
        )  # fmt: skip
        urllib.request.urlopen(request, timeout=10).close()
        time.sleep(10)
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={work / 'profile'}",
             "--virtual-time-budget=4000", "--window-size=1280,860", "--hide-scrollbars",
             f"--screenshot={out}", f"http://127.0.0.1:{port}/dashboard"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/view.json", timeout=10) as r:
            view = json.loads(r.read())
        lag = view["meshes"][0]["replication"]["latency_ms"]
        print(f"wrote {out}; replication lag to the aggregator: {json.dumps(lag)}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
