"""Test helper: run a script as rank 0 of a one-process gloo "world" (DeepSpeed on the CPU), the way
several tests build a real :class:`zerolm.pretrain.engine.Engine` without torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def run_as_single_rank(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS…`` with ``RANK=0``, ``WORLD_SIZE=1``, a free ``MASTER_PORT``,
    ``DS_ACCELERATOR=cpu`` and one thread; returns the finished process (stdout/stderr captured)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=timeout)
