"""Imported by a zygote child (tests/faults/kill.py `hooks`): this process runs on the host named
by DAKD_TEST_HOSTNAME (socket.gethostname, which writer leases record and compare), i.e. a retry
of a stage on another node, whose lease logic cannot see whether the first run's process lives."""

from __future__ import annotations

import os
import socket

_HOST = os.environ["DAKD_TEST_HOSTNAME"]
socket.gethostname = lambda: _HOST
