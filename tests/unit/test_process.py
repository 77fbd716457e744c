"""The process runner with real child processes: deadlines, process groups, output caps."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from orchestrator import process
from orchestrator.process import ProcessFailed

PY = sys.executable

# A child that starts a sleeping grandchild (same process group, no shell), writes
# "<child pid> <grandchild pid>" to argv[1] once both exist, then sleeps itself.
FAMILY = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.replace(tmp, sys.argv[1])
time.sleep(60)
"""

# A child that ignores SIGTERM, then says so by writing its pid to argv[1].
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(str(os.getpid()))
os.replace(tmp, sys.argv[1])
time.sleep(60)
"""


def _read_if_there(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


async def _wait_for_file(path: Path, timeout: float = 15.0) -> str:
    """The text of ``path`` once it exists (the children write it atomically)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _read_if_there(path)
        if text is not None:
            return text
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def _alive(pid: int) -> bool:
    """Running or stopped; a zombie (dead, not yet reaped by an init that may never) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _wait_until_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.02)
    return [pid for pid in pids if _alive(pid)]


@pytest.fixture
def reap_leftovers():
    """Kills whatever a failing test left running (only the pids it registered)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_run_raises_naming_the_command_when_it_does_not_finish_in_time():
    argv = [PY, "-c", "import time; time.sleep(30)"]
    started = time.monotonic()
    with pytest.raises(ProcessFailed) as caught:
        await process.run(argv, timeout=0.3)
    message = str(caught.value)
    assert message.startswith(f"`{shlex.join(argv)}` ")
    assert "did not finish within 0.3s" in message
    assert time.monotonic() - started < 5  # SIGTERM ended it, not the 30 s sleep


async def test_run_kills_the_whole_process_group_on_timeout(tmp_path, reap_leftovers):
    pids_file = tmp_path / "pids"
    task = asyncio.create_task(process.run([PY, "-c", FAMILY, str(pids_file)], timeout=2.0))
    pids = [int(pid) for pid in (await _wait_for_file(pids_file)).split()]
    reap_leftovers += pids
    assert all(_alive(pid) for pid in pids)
    with pytest.raises(ProcessFailed, match="did not finish within 2s"):
        await task
    assert _wait_until_dead(pids) == []


async def test_cancelling_the_awaiting_task_kills_the_whole_process_group(tmp_path, reap_leftovers):
    pids_file = tmp_path / "pids"
    task = asyncio.create_task(process.run([PY, "-c", FAMILY, str(pids_file)], timeout=60))
    pids = [int(pid) for pid in (await _wait_for_file(pids_file)).split()]
    reap_leftovers += pids
    assert all(_alive(pid) for pid in pids)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _wait_until_dead(pids) == []


async def test_a_child_ignoring_sigterm_gets_sigkill_after_the_grace_period(
    tmp_path, reap_leftovers
):
    # `grace` rather than patching KILL_GRACE: the default is bound when spawn is defined.
    grace = 0.3
    ready = tmp_path / "ready"
    async with process.spawn([PY, "-c", STUBBORN, str(ready)], grace=grace) as child:
        reap_leftovers.append(child.pid)
        assert int(await _wait_for_file(ready)) == child.pid
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert child.process.returncode == -signal.SIGKILL
    assert grace * 0.9 <= took < process.KILL_GRACE  # SIGTERM had its grace, then SIGKILL
    assert not _alive(child.pid)


async def test_output_beyond_the_cap_keeps_head_and_tail_and_counts_the_rest():
    total, cap = 50 * 1024 * 1024, 64 * 1024
    writer = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'HEAD-MARK')\n"
        f"block = b'x' * {1024 * 1024}\n"
        f"for _ in range({total // (1024 * 1024)}): out.write(block)\n"
        "out.write(b'TAIL-MARK')\n"
    )
    written = total + len("HEAD-MARK") + len("TAIL-MARK")
    result = await process.run([PY, "-c", writer], timeout=60, max_output=cap)
    marker = f"\n[… {written - cap} bytes dropped …]\n"
    assert result.returncode == 0
    assert marker in result.stdout
    head, tail = result.stdout.split(marker)
    assert head.startswith("HEAD-MARK") and tail.endswith("TAIL-MARK")
    assert len(head) + len(tail) == cap


async def test_output_beyond_the_cap_does_not_grow_the_orchestrators_memory():
    writer = (
        "import sys\n"
        f"block = b'y' * {1024 * 1024}\n"
        "for _ in range(50): sys.stdout.buffer.write(block)\n"
    )
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = await process.run([PY, "-c", writer], timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.returncode == 0 and "bytes dropped" in result.stdout
    # Buffering the 50 MB, even once, would show here; the cap and pipe buffers are < 1 MB.
    assert peak - before < 8 * 1024 * 1024


async def test_a_one_megabyte_line_without_newline_is_logged_truncated(caplog, monkeypatch):
    logger = logging.getLogger("orchestrator")
    monkeypatch.setattr(logger, "propagate", True)
    caplog.set_level(logging.INFO, logger="orchestrator")
    size = 1024 * 1024
    result = await process.run(
        [PY, "-c", f"import sys; sys.stdout.write('z' * {size})"],
        timeout=60,
        label="step",
        log_output=True,
    )
    assert result.returncode == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step: z")]
    assert len(lines) == 1 and len(lines[0]) < 5000
    assert lines == [
        "step: " + "z" * process.LOG_LINE_MAX + f" [… {size - process.LOG_LINE_MAX} more bytes "
        "of this line]"
    ]


async def test_non_zero_exit_is_returned_and_check_raises_with_code_and_last_stderr_line():
    script = "import sys; print('some output'); sys.stderr.write('first\\nthe last words\\n\\n');"
    script += " sys.exit(3)"
    argv = [PY, "-c", script]
    result = await process.run(argv, timeout=30)
    assert result.returncode == 3
    with pytest.raises(ProcessFailed) as caught:
        result.check()
    # The script's own quotes stay readable: "…print('some output')…", not '"'"'.
    shown = f'{PY} -c "{script}"'
    assert str(caught.value) == f"`{shown}` failed with exit code 3: the last words"
    assert caught.value.returncode == 3


async def test_zero_exit_passes_check():
    result = await process.run([PY, "-c", "print('fine')"], timeout=30)
    assert result.check() is result
    assert result.stdout == "fine\n"


@pytest.mark.parametrize("program", ["/nonexistent/program", "no-such-program-anywhere-x7"])
async def test_missing_program_raises_not_found(program):
    with pytest.raises(ProcessFailed) as caught:
        await process.run([program, "arg"], timeout=10)
    assert str(caught.value) == f"`{program} arg` cannot start: not found: {program}"


async def test_stdin_input_reaches_the_child():
    result = await process.run(
        [PY, "-c", "import sys; sys.stdout.write(sys.stdin.read()[::-1])"],
        timeout=30,
        input=b"hello child",
    )
    assert result.stdout == "dlihc olleh"


async def test_a_child_that_writes_before_reading_its_input_does_not_deadlock():
    size = 4 * 1024 * 1024  # far more than a pipe holds, in both directions
    script = (
        f"import sys; sys.stdout.write('o' * {size}); sys.stdout.flush();"
        " print(len(sys.stdin.buffer.read()), file=sys.stderr)"
    )
    result = await process.run([PY, "-c", script], timeout=30, input=b"i" * size)
    assert result.returncode == 0
    assert result.stderr.strip() == str(size)


async def test_argv_is_never_interpreted_by_a_shell(tmp_path):
    marker = tmp_path / "X"
    dangerous = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}"]
    result = await process.run(
        [PY, "-c", "import sys; print(repr(sys.argv[1:]))", *dangerous],
        timeout=30,
        cwd=tmp_path,
    )
    assert result.stdout.strip() == repr(dangerous)
    assert not marker.exists()
    assert list(tmp_path.iterdir()) == []


async def test_a_command_with_a_newline_is_logged_and_reported_on_one_line(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("orchestrator"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="orchestrator")
    argv = [PY, "-c", "import sys\nsys.exit(3)"]
    result = await process.run(argv, timeout=30, label="hook on_done")
    with pytest.raises(ProcessFailed) as failed:
        result.check()
    started = [r.getMessage() for r in caplog.records if "running `" in r.getMessage()]
    # $'…\\n…': one line, and pasted into bash it is the same two-line script again.
    assert started == [
        f"hook on_done: running `{shlex.join(argv[:2])} $'import sys\\nsys.exit(3)'`"
    ]
    assert "\n" not in str(failed.value)
    assert "'import sys\\nsys.exit(3)'` failed with exit code 3" in str(failed.value)
