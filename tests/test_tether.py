"""Processes started for a parent die with it, even when the parent is killed with SIGKILL:
anvil (LocalChain), an embedded Valkey (start_valkey), and a whole process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PARENT = r"""
import json, subprocess, sys, time
from meshcompute.chain.local import LocalChain
from meshcompute.market.embedded_redis import start_valkey
from meshcompute.tether import tether

chain = LocalChain(anvil_path=sys.argv[1]).start()
valkey = start_valkey()
import redis
valkey_pid = redis.Redis.from_url(valkey.connection_url).info("server")["process_id"]
group = subprocess.Popen(["bash", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
tether(group.pid, group=True)
time.sleep(0.5)
members = subprocess.run(["pgrep", "-g", str(group.pid)], capture_output=True, text=True)
print(json.dumps({"anvil": chain._process.pid, "valkey": int(valkey_pid),
                  "group": [int(p) for p in members.stdout.split()]}), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.anvil
def test_everything_started_dies_with_a_killed_parent(anvil_binary: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARENT), anvil_binary],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = parent.stdout.readline()
        assert line, "the parent printed nothing (failed to start what it starts)"
        started = json.loads(line)
        pids = [started["anvil"], started["valkey"], *started["group"]]
        assert len(started["group"]) == 3 and all(_alive(pid) for pid in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        give_up = time.monotonic() + 15
        while any(_alive(pid) for pid in pids) and time.monotonic() < give_up:
            time.sleep(0.1)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
