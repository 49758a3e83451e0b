"""The workdir lock: one run per workdir at a time, and a dead run's lock never blocks a restart.

`<workdir>/lock.json` names its owner: host, pid, start time, and a heartbeat time that a daemon
thread refreshes every HEARTBEAT_SECONDS. A second run on the workdir is refused with
`WorkdirLocked` (one sentence naming the owner's host and pid) unless the lock is stale:
- same host: the owner's pid no longer runs (a kill -9, a crash, a reboot) or is a zombie;
- another host (whose processes this one cannot see): no heartbeat for STALE_SECONDS;
- a lock file that cannot be read for TORN_SECONDS (its owner died while writing it).
A stale lock is replaced with a warning. The run releases its lock in the training loop's
`finally`, so a normal end, an error, a NaN stop and a preemption all release it.

Multi-process runs: process 0 alone takes the lock for the whole run (it is the process that
writes the shared files); it broadcasts the outcome, so that on a refusal every process stops
with the same sentence instead of waiting for the others in a collective.

Local disks create the lock atomically (O_CREAT | O_EXCL). On object stores (gs://, through
etils.epath) there is no create-exclusive: the lock is written, read back and its token compared,
which catches all but two runs started within the same instant (best effort, documented).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging
from etils import epath

from fajax.train.errors import UserError

LOCK_FILE = "lock.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 120.0  # Four missed heartbeats: the owner on another host is gone.
TORN_SECONDS = 10.0  # An unreadable lock this old is a write cut short by a crash.


class WorkdirLocked(UserError):
  """Another live run owns the workdir."""


def _is_local(path) -> bool:
  return re.match(r"^[a-zA-Z][\w+.-]*://", os.fspath(path)) is None


def pid_runs(pid: int) -> bool:
  """True when process `pid` exists on this host and is not a zombie (killed, not yet reaped)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's live process.
    return True
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):  # No procfs (macOS): trust kill().
    return True


def stale_reason(owner: dict, now: float | None = None) -> str | None:
  """Why the lock `owner` (the content of a lock file) is stale, or None when it is live."""
  now = time.time() if now is None else now
  if owner.get("host") == socket.gethostname():
    if not pid_runs(int(owner.get("pid", -1))):
      return f"process {owner.get('pid')} no longer runs"
    return None
  age = now - float(owner.get("heartbeat", 0))
  if age > STALE_SECONDS:
    return f"its last heartbeat is {age:.0f} s old"
  return None


def describe(owner: dict | None, path) -> str:
  if owner is None:
    return f"the lock {path} is held"
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
  return f"pid {owner.get('pid')} on host {owner.get('host')} holds it since {started} ({path})"


class WorkdirLock:
  """`<workdir>/lock.json` for this process; `acquire()` then `release()` (also a context)."""

  def __init__(self, workdir):
    self.path = epath.Path(workdir) / LOCK_FILE
    self._token = uuid.uuid4().hex
    self._started = time.time()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _record(self) -> str:
    owner = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": self._started,
      "heartbeat": time.time(),
      "token": self._token,
    }
    return json.dumps(owner, indent=2) + "\n"

  def read(self) -> dict | None:
    """The lock's owner record; None when there is no lock or it cannot be parsed."""
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None

  def _create(self) -> bool:
    if _is_local(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(self._record())
      return True
    if self.path.exists():  # Best effort on object stores: write, read back, compare.
      return False
    self.path.write_text(self._record())
    return (self.read() or {}).get("token") == self._token

  def _write(self) -> None:
    """Rewrites the record (a new heartbeat) atomically where the file system can."""
    if _is_local(self.path):
      tmp = self.path.with_name(f"{LOCK_FILE}.{self._token}")
      tmp.write_text(self._record())
      tmp.replace(self.path)
    else:
      self.path.write_text(self._record())

  def acquire(self) -> WorkdirLock:
    """Takes the lock, replacing a stale one; raises WorkdirLocked when a live run holds it."""
    owner = None
    for _ in range(5):
      if self._create():
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="fajax-lock")
        self._thread.start()
        return self
      owner = self.read()
      if owner is None:  # Being written or removed right now, or torn by a crash.
        if self._age() > TORN_SECONDS:
          logging.warning("Replacing the unreadable lock %s.", self.path)
          self.path.unlink(missing_ok=True)
        else:
          time.sleep(0.2)
        continue
      reason = stale_reason(owner)
      if reason is None:
        break
      logging.warning(
        "Replacing the stale lock of pid %s on host %s (%s): %s.",
        owner.get("pid"),
        owner.get("host"),
        reason,
        self.path,
      )
      if self.read() == owner:  # Not replaced meanwhile by another restart.
        self.path.unlink(missing_ok=True)
    raise WorkdirLocked(
      f"The workdir {self.path.parent} is in use by another run: {describe(owner, self.path)}; "
      "wait for it to finish, stop it, or use another --workdir."
    )

  def _age(self) -> float:
    try:
      return time.time() - float(self.path.stat().mtime)
    except OSError:
      return 0.0

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        if (self.read() or {}).get("token") == self._token:
          self._write()
      except OSError as e:  # A full disk must not kill the run; staleness needs minutes anyway.
        logging.warning("Could not refresh the workdir lock %s: %s", self.path, e)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still this process's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    try:
      if (self.read() or {}).get("token") == self._token:
        self.path.unlink(missing_ok=True)
    except OSError as e:
      logging.warning("Could not remove the workdir lock %s: %s", self.path, e)

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def acquire_for_run(workdir) -> WorkdirLock | None:
  """Process 0 takes the workdir lock; every process raises WorkdirLocked if it could not."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir).acquire()
    except Exception as e:  # Whatever it is, the other processes must hear of it, not hang.
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # Loaded only by multi-process runs.

    refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if refused and error is None:
      path = epath.Path(workdir) / LOCK_FILE
      error = WorkdirLocked(
        f"The workdir {workdir} is in use by another run (process 0 could not lock it): "
        f"{describe(WorkdirLock(workdir).read(), path)}; wait for it to finish, stop it, or "
        "use another --workdir."
      )
  if error is not None:
    raise error
  return lock
