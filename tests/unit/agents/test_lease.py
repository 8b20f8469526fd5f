"""agents.lease: a process that stood still past its session timeout presumes its partitions
lost until the next rebalance (or until twice the timeout passed without one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from agents.lease import Lease, LeaseLost


def test_a_running_clock_keeps_the_lease() -> None:
    lease = Lease(timeout=0.5, tick=0.01).start()
    try:
        time.sleep(0.3)
        lease.check()
        assert not lease.lost
    finally:
        lease.stop()


def test_a_gap_since_the_last_tick_loses_it_until_renewed() -> None:
    lease = Lease(timeout=0.2)  # no clock thread: the last tick is when it was made
    time.sleep(0.25)  # as if the whole process had been stopped
    with pytest.raises(LeaseLost):
        lease.check()
    lease.renew()  # a rebalance completed
    lease.check()


def test_without_a_rebalance_the_lease_returns_after_twice_the_timeout() -> None:
    lease = Lease(timeout=0.1, tick=0.01)
    time.sleep(0.15)
    assert lease.lost
    lease.start()
    try:
        time.sleep(0.3)  # ticking again, and no renew: the group evidently kept us
        assert not lease.lost
    finally:
        lease.stop()


SCRIPT = """
import sys, time
from agents.lease import Lease
lease = Lease(timeout=0.3, tick=0.02).start()
print("ready", flush=True)
sys.stdin.readline()  # the test SIGSTOPs us for a while, then SIGCONTs and writes a line
print("lost" if lease.lost else "kept", flush=True)
"""


@pytest.mark.skipif(
    not hasattr(signal, "SIGSTOP"), reason="SIGSTOP is POSIX only (the lease guards against it)"
)
def test_sigstop_past_the_timeout_loses_the_lease() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.6)
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "lost"
    finally:
        proc.kill()
        proc.wait()
