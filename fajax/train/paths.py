"""One path layer for every file of a workdir: local folders and `gs://` (any etils.epath backend).

The trainer, the sweep and the report read and write workdirs only through these functions, so a
workdir may be `/data/run` or `gs://bucket/run`. Local paths use the os module directly (fast,
atomic renames); other paths go through `etils.epath`, which orbax uses for checkpoints too.
epath reaches `gs://` through TensorFlow's gfile when TensorFlow is installed, else through
gcsfs; set `EPATH_USE_TF=false` to force gcsfs (needed for a local GCS emulator, which gfile
cannot reach). Object stores cannot append, rename atomically or keep a file open while others
read it, so:

- `open_append` of a remote file keeps the content in memory and rewrites the object at each
  flush (metrics.jsonl: small, flushed at log steps);
- `write_text` of a remote file is one object upload, which GCS makes visible all at once;
- `LocalMirror` gives writers that need a real local folder (TensorBoard's event writer) a
  temporary one and copies its files to the remote folder at each `sync`.
"""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile

from etils import epath


def is_local(path) -> bool:
  """True for plain file-system paths, False for URLs such as gs://bucket/run."""
  return "://" not in os.fspath(path)


def resolve(path) -> str:
  """An absolute local path, or the URL unchanged (without a trailing slash)."""
  path = os.fspath(path)
  return os.path.abspath(path) if is_local(path) else path.rstrip("/")


def join(path, *parts) -> str:
  return os.path.join(os.fspath(path), *parts)


def exists(path) -> bool:
  return os.path.exists(path) if is_local(path) else epath.Path(path).exists()


def isdir(path) -> bool:
  return os.path.isdir(path) if is_local(path) else epath.Path(path).is_dir()


def listdir(path) -> list[str]:
  """Names in folder `path`, sorted."""
  if is_local(path):
    return sorted(os.listdir(path))
  return sorted(p.name for p in epath.Path(path).iterdir())


def makedirs(path) -> None:
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def open(path, mode: str = "r"):  # noqa: A001 (the module's open, like os.open)
  """A file object for reading ('r', 'rb') or writing whole files ('w', 'wb')."""
  if "a" in mode:
    raise ValueError("Use paths.open_append to append.")
  if is_local(path):
    return builtins.open(path, mode)  # noqa: SIM115 (the caller closes it).
  return epath.Path(path).open(mode)


def read_text(path) -> str:
  with open(path) as f:
    return f.read()


def write_text(path, text: str) -> None:
  """Writes a whole file so that readers see the old or the new content, never a part."""
  if is_local(path):
    tmp = f"{path}.tmp"
    with builtins.open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  else:
    epath.Path(path).write_text(text)


def move(source, target) -> None:
  """Moves a file or folder (a remote folder is copied file by file, then deleted)."""
  if is_local(source):
    shutil.move(source, target)
    return
  source, target = epath.Path(source), epath.Path(target)
  if not source.is_dir():
    source.rename(target)
    return
  prefix = str(source).split("://", 1)[-1]
  for folder, _, files in source.walk():  # epath refuses recursive globs on GCS.
    relative = str(folder).split("://", 1)[-1][len(prefix) :].strip("/")  # walk drops gs://.
    for name in files:
      destination = target / relative / name
      destination.parent.mkdir(parents=True, exist_ok=True)
      (source / relative / name).copy(destination, overwrite=True)
  source.rmtree()


class _RewrittenFile:
  """A remote file opened for appending: the whole content is rewritten at each flush."""

  def __init__(self, path):
    self._path = epath.Path(path)
    self._parts = [self._path.read_text()] if self._path.exists() else []
    self._dirty = False

  def write(self, text: str) -> None:
    self._parts.append(text)
    self._dirty = True

  def writelines(self, lines) -> None:
    for line in lines:
      self.write(line)

  def flush(self) -> None:
    if self._dirty:
      self._parts = ["".join(self._parts)]
      self._path.write_text(self._parts[0])
      self._dirty = False

  def close(self) -> None:
    self.flush()


def open_append(path):
  """A text file object that appends to `path` (created if needed); flush() makes writes visible."""
  if is_local(path):
    return builtins.open(path, "a")  # noqa: SIM115 (the caller closes it).
  return _RewrittenFile(path)


class LocalMirror:
  """A local folder for writers that need one, mirrored to `path` when that is remote.

  `local` is `path` itself when it is local; otherwise a temporary folder whose files `sync`
  copies to `path` (changed files only) and `close` removes after a last sync.
  """

  def __init__(self, path):
    self.path = os.fspath(path)
    self._remote = not is_local(path)
    self.local = tempfile.mkdtemp(prefix="fajax-mirror-") if self._remote else self.path
    os.makedirs(self.local, exist_ok=True)
    self._sizes: dict[str, int] = {}

  def sync(self) -> None:
    if not self._remote:
      return
    for root, _, files in os.walk(self.local):
      for name in files:
        source = os.path.join(root, name)
        relative = os.path.relpath(source, self.local)
        size = os.path.getsize(source)
        if self._sizes.get(relative) != size:
          target = epath.Path(self.path) / relative
          target.parent.mkdir(parents=True, exist_ok=True)
          with builtins.open(source, "rb") as f:
            target.write_bytes(f.read())
          self._sizes[relative] = size

  def close(self) -> None:
    if self._remote:
      self.sync()
      shutil.rmtree(self.local, ignore_errors=True)
