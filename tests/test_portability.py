"""Windows and macOS behaviour, checked on Linux: each test gives the code what the other system
would (os.getppid's answer, a list file's encoding, its memory call...) and fails without the fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# A driver that spawns one child and dies without a goodbye (as Task Manager's End task kills
# it); the child answers os.getppid as Windows does, the dead parent's PID, and waits for
# driver._driver_gone to notice.
ORPHAN_DRIVER = '''
import multiprocessing, os, sys, time

def child(folder):
    from stylefu.core.batch import driver
    first = os.getppid()
    os.getppid = lambda: first  # Windows: the dead parent's PID stays
    open(os.path.join(folder, "ready"), "w").close()
    while not driver._driver_gone(first):
        time.sleep(0.05)
    open(os.path.join(folder, "noticed"), "w").close()

if __name__ == "__main__":
    proc = multiprocessing.get_context("spawn").Process(target=child, args=(sys.argv[1],))
    proc.start()
    print(proc.pid, flush=True)
    while not os.path.exists(os.path.join(sys.argv[1], "ready")):
        time.sleep(0.05)
    os._exit(9)
'''


def test_a_batch_worker_notices_its_killed_driver_though_getppid_keeps_its_pid(tmp_path):
    """Windows' os.getppid keeps a dead parent's PID: a worker that only compared it would wait
    for tasks forever with its model loaded. The parent's own handle (pipe) says it has ended."""
    script = tmp_path / "driver.py"
    script.write_text(ORPHAN_DRIVER, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    child = int(done.stdout.split()[0])
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "noticed").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "noticed").exists(), "the orphaned worker never noticed"
    finally:
        try:
            os.kill(child, signal.SIGKILL)  # our own child, if it is still waiting
        except ProcessLookupError:
            pass


def test_a_batch_worker_keeps_going_while_its_driver_lives(monkeypatch):
    from stylefu.core.batch import driver

    class Parent:
        def __init__(self, alive):
            self.alive = alive

        def is_alive(self):
            return self.alive

    monkeypatch.setattr(driver.os, "getppid", lambda: 4321)
    monkeypatch.setattr(driver.multiprocessing, "parent_process", lambda: Parent(True))
    assert not driver._driver_gone(4321)
    monkeypatch.setattr(driver.multiprocessing, "parent_process", lambda: Parent(False))
    assert driver._driver_gone(4321)
    monkeypatch.setattr(driver.multiprocessing, "parent_process", lambda: None)  # not spawned
    assert driver._driver_gone(1) and not driver._driver_gone(4321)

