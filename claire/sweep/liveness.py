"""Who runs a sweep trial, and whether that process is gone: a sweeper records itself on each trial it asks.

The record is the sweeper's own process, whatever the launcher: it alone keeps the trial's heartbeat and tells the
study how the trial ended, so once it is gone the trial can never finish (a job it launched may still compute, but
nobody will tell its result). A trial is judged only on the machine that recorded it (same host name, kernel boot
and pid namespace); elsewhere its heartbeat decides. On Linux the process's start time guards against a reused pid;
without /proc a live pid is taken for the trial's process (a reused pid then makes a sweeper wait for the heartbeat).
"""

import os
import socket
from pathlib import Path
from typing import Any

KEY = "claire_owner"  # the trial's system attr holding its owner record


def owner(trial_number: int) -> dict[str, Any]:
    """This process's record for a trial: host, machine, pid, start time, and the trial it was written for."""
    pid = os.getpid()
    here = {"host": socket.gethostname(), "machine": machine(), "pid": pid}
    return here | {"started": started(pid), "trial": trial_number}


def machine() -> str:
    """What tells this machine's processes from any other's: host name, kernel boot and pid namespace (Linux)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{read('/proc/sys/kernel/random/boot_id')}|{namespace}"


def read(path: str) -> str:
    """A small file's text, stripped ('' when it cannot be read)."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None when absent."""
    text = read(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if ")" in text else None


def started(pid: int) -> int | None:
    """A process's start time in clock ticks after boot (Linux), None where unknown."""
    fields = stat(pid)
    return int(fields[19]) if fields else None


def recorded(trial: Any) -> dict[str, Any] | None:
    """The owner record of a FrozenTrial, None when it has none of its own (a retry carries its original's)."""
    found = trial.system_attrs.get(KEY)
    return found if isinstance(found, dict) and found.get("trial") == trial.number else None


def gone(record: dict[str, Any] | None) -> bool:
    """Whether a recorded owner was a process of this machine that no longer runs (False if unknown or elsewhere)."""
    if not record or record.get("machine") != machine() or not isinstance(record.get("pid"), int) or record["pid"] < 1:
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    fields = stat(record["pid"])
    if fields is None:  # on Linux it died since the signal; without /proc the live pid is taken for the owner
        return Path("/proc/self/stat").exists()
    reused = record.get("started") is not None and int(fields[19]) != record["started"]
    return fields[0] in ("Z", "X") or reused  # a zombie is gone too


def describe(record: dict[str, Any] | None) -> str:
    """A record in words, for the sweeper's log."""
    if not record:
        return "a process that recorded no host and pid"
    return f"process {record.get('pid')} on {record.get('host')}"
