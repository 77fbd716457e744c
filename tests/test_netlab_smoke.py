"""The real-host lab itself (tests/netlab), proven with the plain OpenSSH client, not the
orchestrator: what a fault-matrix test relies on must really happen on the wire."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.netlab import CONTROLLER, Fault, Lab, fixtures
from tests.netlab.fixtures import require_netlab
from tests.netlab.lab import EVENTS_IN_BOOT_ORDER, _lab_prefixes, down

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab  # also imported by tests/conftest.py; here so this file stands alone

REPO = Path(__file__).resolve().parents[1]


def ssh(lab: Lab, host: str, *command: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(
        lab.ssh_argv(host, *command), capture_output=True, text=True, timeout=timeout, check=False
    )


def connect_outcome(address: str, port: int, timeout: float = 0.5) -> str:
    with socket.socket() as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        return "connected"


def health_status(address: str) -> int:
    conn = http.client.HTTPConnection(address, 8080, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def names(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def test_hosts_serve_their_own_uuid_boot_id_and_running_state_over_real_sshd(netlab):
    lab = netlab(2)
    real_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    seen = set()
    for host in ("h1", "h2"):
        result = ssh(lab, host, "cat", "/proc/sys/kernel/random/boot_id")
        assert result.returncode == 0, result.stderr
        boot_id = result.stdout.strip()
        assert str(uuid.UUID(boot_id)) == boot_id
        assert boot_id == lab.boot_id(host) != real_boot_id
        seen.add(boot_id)

        state = ssh(lab, host, "systemctl", "is-system-running")
        assert (state.returncode, state.stdout) == (0, "running\n")
        home = ssh(lab, host, "echo $HOME")  # not the build machine's /root and its dotfiles
        assert home.stdout.strip() == str(lab.hosts[host].dir / "home")
        assert health_status(lab.hosts[host].address) == 200
    assert len(seen) == 2


def test_reboot_over_ssh_drops_sessions_goes_dark_and_returns_with_a_new_boot_id(netlab):
    lab = netlab(1, boot_time=1.5)
    address = lab.hosts["h1"].address
    before = ssh(lab, "h1", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    session = subprocess.Popen(
        lab.ssh_argv("h1", "sleep", "60"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)  # the session is established
    t0 = time.time()

    reply = ssh(lab, "h1", "systemctl", "reboot")

    assert reply.returncode == 0, reply.stderr
    assert time.time() - t0 < 1.5, "systemctl reboot must return at once"
    assert session.wait(timeout=5) == 255, "the open session must be cut"
    lab.wait_event("h1", "down", since=t0)
    assert connect_outcome(address, 22) == "timeout"
    assert connect_outcome(address, 8080) == "timeout"
    lab.wait_event("h1", "healthy", since=t0, timeout=10)

    events = lab.events("h1", since=t0)
    assert [n for n in names(events) if n in EVENTS_IN_BOOT_ORDER] == list(EVENTS_IN_BOOT_ORDER)
    at = {e["event"]: e for e in events}
    assert 1.5 <= at["booted"]["t"] - at["down"]["t"] < 1.8
    after = ssh(lab, "h1", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    assert after == at["booted"]["boot_id"] != before
    assert ssh(lab, "h1", "systemctl", "is-system-running").stdout == "running\n"
    assert lab.reboot_count("h1") == 1
    assert lab.healthy_times("h1") == [at["healthy"]["t"]]


def test_refuse_fault_keeps_the_link_up_so_connects_are_refused_while_down(netlab):
    lab = netlab(1, faults={"h1": Fault(refuse=True)})
    t0 = time.time()
    assert ssh(lab, "h1", "reboot").returncode == 0  # the `reboot` shim
    lab.wait_event("h1", "down", since=t0)
    assert connect_outcome(lab.hosts["h1"].address, 22) == "refused"
    assert connect_outcome(lab.hosts["h1"].address, 8080) == "refused"
    lab.wait_event("h1", "healthy", since=t0)
    assert ssh(lab, "h1", "true").returncode == 0


def test_new_host_key_fault_makes_strict_host_key_checking_reject_the_host(netlab):
    lab = netlab(1, boot_time=0.3, faults={"h1": Fault(new_host_key=True)})
    assert ssh(lab, "h1", "true").returncode == 0
    t0 = time.time()
    lab.reboot("h1")
    booted = lab.wait_event("h1", "ssh_up", since=t0)
    assert booted

    result = ssh(lab, "h1", "touch", "/tmp/netlab-must-not-exist")

    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    key = lab.events("h1", "booted", since=t0)[0]["host_key"]
    assert key not in lab.known_hosts_path.read_text()


def test_state_and_health_faults_shape_what_a_rebooted_host_reports(netlab):
    lab = netlab(
        3,
        boot_time=0.3,
        faults={
            "h1": Fault(state="degraded"),
            "h2": Fault(http="flap"),
            "h3": Fault(http="fail", http_delay=1.0),
        },
    )
    t0 = time.time()
    for host in ("h1", "h2", "h3"):
        lab.reboot(host)
    for host in ("h1", "h2", "h3"):
        lab.wait_event(host, "http_up", since=t0, timeout=10)

    degraded = ssh(lab, "h1", "systemctl", "is-system-running")
    assert (degraded.returncode, degraded.stdout) == (1, "degraded\n")
    flaps = [health_status(lab.hosts["h2"].address) for _ in range(6)]
    assert sorted(set(flaps)) == [200, 503]
    assert all(a != b for a, b in itertools.pairwise(flaps)), flaps
    assert health_status(lab.hosts["h3"].address) == 503
    ssh_up = lab.events("h3", "ssh_up", since=t0)[0]["t"]
    http_up = lab.events("h3", "http_up", since=t0)[0]["t"]
    assert 1.0 <= http_up - ssh_up < 1.4
    assert lab.events(event="healthy", since=t0) == []

    lab.set_http("h3", "ok")  # runtime changes apply at once
    assert health_status(lab.hosts["h3"].address) == 200
    assert lab.wait_event("h3", "healthy", since=t0)


def test_never_returns_stays_dark_and_noop_reboot_keeps_the_boot_id(netlab):
    lab = netlab(
        2, boot_time=0.3, faults={"h1": Fault(never_returns=True), "h2": Fault(noop_reboot=True)}
    )
    before = lab.boot_id("h2")
    t0 = time.time()

    assert ssh(lab, "h1", "systemctl", "reboot").returncode == 0
    assert ssh(lab, "h2", "systemctl", "reboot").returncode == 0

    lab.wait_event("h1", "down", since=t0)
    time.sleep(1.0)
    assert connect_outcome(lab.hosts["h1"].address, 22) == "timeout"
    assert lab.events("h1", "booted") == []
    assert names(lab.events("h2", since=t0)) == ["reboot_requested", "reboot_ignored"]
    assert ssh(lab, "h2", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip() == before
    assert ssh(lab, "h2", "systemctl", "is-system-running").stdout == "running\n"
    assert lab.reboot_count("h2") == 0


def test_controller_reboot_terminates_its_processes_then_runs_resume_after_boot(netlab):
    resume = "cat /proc/sys/kernel/random/boot_id; systemctl is-system-running; exit 3"
    lab = netlab(
        1,
        controller=True,
        boot_time=0.5,
        kill_grace=0.5,
        resume_argv=["sh", "-c", resume],
    )
    polite = lab.spawn_in(
        CONTROLLER,
        [
            "sh",
            "-c",
            "trap 'echo got-TERM; exit 143' TERM; systemctl reboot && echo requested;"
            " while :; do sleep 0.05; done",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    stubborn = lab.spawn_in(
        CONTROLLER,
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ],
    )

    out, _ = polite.communicate(timeout=10)

    assert polite.returncode == 143
    assert out.splitlines() == ["requested", "got-TERM"]
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    exited = lab.wait_event(CONTROLLER, "resume_exited", timeout=10)
    assert exited["code"] == 3
    booted = lab.events(CONTROLLER, "booted")[0]
    assert Path(exited["log"]).read_text() == f"{booted['boot_id']}\nrunning\n"
    order = names(lab.events(CONTROLLER))
    assert order.index("down") < order.index("booted") < order.index("resume_started")
    assert order.index("state") < order.index("resume_started")


def test_controller_reaches_hosts_and_its_processes_can_be_killed_from_the_test(netlab):
    lab = netlab(1, controller=True)
    reached = lab.run_in(
        CONTROLLER,
        lab.ssh_argv("h1", "cat", "/proc/sys/kernel/random/boot_id"),
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert (reached.returncode, reached.stdout.strip()) == (0, lab.boot_id("h1"))
    local = lab.run_in(
        CONTROLLER,
        ["cat", "/proc/sys/kernel/random/boot_id"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert local.stdout.strip() == lab.boot_id(CONTROLLER)

    sleeper = lab.spawn_in(CONTROLLER, ["sleep", "60"])
    assert wait_until(lambda: any(p.argv == ["sleep", "60"] for p in lab.processes_in(CONTROLLER)))
    sleeper.kill()

    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert not any(p.argv == ["sleep", "60"] for p in lab.processes_in(CONTROLLER))


def test_stop_removes_namespaces_links_and_every_process(tmp_path):
    require_netlab()
    lab = Lab(tmp_path / "lab", 2, controller=True).start()
    sleeper = lab.spawn_in(CONTROLLER, ["sleep", "60"])
    deadline = time.monotonic() + 5  # the sleeper needs a moment to appear inside the host
    while True:
        pids = [p.outer_pid for h in lab.hosts for p in lab.processes_in(h)]
        pids += [lab.init_pid(h) for h in lab.hosts]
        if len(pids) >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(pids) >= 7  # sshd per host, the sleeper, init per host

    lab.stop()

    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert [p for p in pids if Path(f"/proc/{p}").exists()] == []
    assert lab.prefix not in _lab_prefixes()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert lab.prefix not in netns.stdout + links.stdout


OWNER = """
import json, sys, time
from tests.netlab import Lab
lab = Lab(sys.argv[1], 2).start()
pids = [lab.init_pid(h) for h in lab.hosts]
print(json.dumps({"prefix": lab.prefix, "pids": pids}), flush=True)
time.sleep(60)
"""


def test_a_lab_whose_owner_dies_stops_its_hosts_and_is_removed_by_down(tmp_path):
    require_netlab()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "lab")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    info = json.loads(owner.stdout.readline())
    owner.kill()  # no finalizer runs
    owner.wait()

    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() for p in info["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in info["pids"] if Path(f"/proc/{p}").exists()] == []

    down(stale_only=True)  # what the next lab's start() does, and `python -m tests.netlab down`
    assert info["prefix"] not in _lab_prefixes()


def test_two_labs_get_their_own_bridge_and_subnet(netlab):
    first, second = netlab(1), netlab(1)
    assert first.prefix != second.prefix
    assert not first.subnet.overlaps(second.subnet)
    assert ssh(first, "h1", "true").returncode == 0
    assert ssh(second, "h1", "true").returncode == 0


def test_orchestrator_config_names_hosts_in_order_with_the_lab_key_and_known_hosts(
    netlab, tmp_path
):
    lab = netlab(["alpha", "beta"], controller=True)
    config = lab.orchestrator_config(tmp_path / "state", reboot={"allow_degraded": True})

    assert list(config["machines"]) == ["alpha", "beta", CONTROLLER]
    assert config["machines"][CONTROLLER] == {"local": True}
    beta = config["machines"]["beta"]
    assert beta["host"] == lab.hosts["beta"].address
    assert beta["checks"][0]["url"] == f"http://{lab.hosts['beta'].address}:8080/health"
    assert config["ssh"]["identity_file"] == str(lab.client_key_path)
    assert config["ssh"]["known_hosts"] == str(lab.known_hosts_path)
    assert config["reboot"]["allow_degraded"] is True
    assert config["reboot"]["stable_passes"] == 2

    path = lab.write_config(tmp_path / "config.yaml", tmp_path / "state")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--config", path, "validate-config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_forty_hosts_come_up_within_seconds(netlab):
    started = time.monotonic()
    lab = netlab(40)
    assert time.monotonic() - started < 10
    assert [health_status(h.address) for h in lab.hosts.values()] == [200] * 40
    assert ssh(lab, "h40", "systemctl", "is-system-running").stdout == "running\n"
