"""RSS of one real ``vsm-edge run`` process: at start and after a while, by mapping.

Starts a Mosquitto (``/usr/sbin/mosquitto``) on a free loopback port and one
agent with the light test configuration (``tests/support/mesh.py``: simulated
sensors, mDNS bound to 127.0.0.1, the status endpoint), waits for its status
endpoint, samples ``VmRSS`` every second for ``--seconds``, then prints the
samples, the resident set grouped by mapping (``/proc/PID/smaps``), the
thread count and the gateway's arbitrator state. Run it repeatedly: RSS is
also shaped by what other processes keep in the page cache.

    .venv/bin/python bench/bench_agent_memory.py --seconds 60
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.brokers import Mosquitto  # noqa: E402
from support.mesh import AgentProcess  # noqa: E402


def vm_rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


def smaps_by_mapping(pid: int) -> collections.Counter[str]:
    rss: collections.Counter[str] = collections.Counter()
    current = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if not (line[0].isupper() and parts[0].endswith(":")):
            current = parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else "[anon]"
        elif parts[0] == "Rss:":
            rss[current] += int(parts[1])
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="sampling time (default 60)")
    parser.add_argument("--sensors", type=int, default=2, help="simulated sensors (default 2)")
    parser.add_argument("--top", type=int, default=12, help="mappings to print (default 12)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-agent-memory-"))
    broker = Mosquitto(workdir)
    broker.start()
    agent = AgentProcess(
        workdir,
        "agent",
        broker.url,
        mesh="bench",
        sensors=args.sensors,
        discovery=["127.0.0.1"],
        protocol="5",
    )
    try:
        agent.start()
        agent.wait_status(60)
        assert agent.proc is not None
        pid = agent.proc.pid
        samples: list[int] = []
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            samples.append(vm_rss_kb(pid))
            time.sleep(1.0)
        samples.append(vm_rss_kb(pid))
        by_mapping = smaps_by_mapping(pid)
        threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
        status = agent.status() or {}
    finally:
        agent.stop()
        broker.stop()
    gateway = status.get("gateway", {})
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"VmRSS: at start {samples[0] / 1024:.1f} MB, after 5 s "
        f"{samples[min(5, len(samples) - 1)] / 1024:.1f} MB, after "
        f"{args.seconds:.0f} s {samples[-1] / 1024:.1f} MB (max {max(samples) / 1024:.1f} MB)"
    )
    print(f"threads {threads}")
    print(f"smaps Rss total {sum(by_mapping.values()) / 1024:.1f} MB, by mapping:")
    for name, kb in by_mapping.most_common(args.top):
        print(f"  {kb / 1024:7.1f} MB  {name}")
    keys = ("allow", "deny", "maybe", "arbitrator", "arbitrator_state", "arbitrator_error")
    print("gateway " + json.dumps({k: gateway.get(k) for k in keys}))


if __name__ == "__main__":
    main()
