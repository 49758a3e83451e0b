"""A local GCS emulator for tests of gs:// workdirs (the `gcp-storage-emulator` package).

    server, env = start()   # env: what a process needs to use it; server.stop() at the end

The variables in `env` point every client at the emulator:
- STORAGE_EMULATOR_HOST: gcsfs, which etils.epath uses for gs:// (metrics, run files, events);
- TENSORSTORE_GCS_HTTP_URL: tensorstore, orbax's array writer (checkpoints);
- EPATH_USE_TF=false: with TensorFlow installed epath would use TF's gfile for gs://, which has
  no endpoint override and goes to the real service;
- GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: recent gcsfs otherwise asks a gRPC control-plane API
  (which the emulator lacks) for each bucket's layout and waits 60 s for it to time out.

The emulator's media downloads lack the `x-goog-generation` header that real GCS sends; orbax's
OCDBT format reads it back when a second write reaches an existing manifest (tensorstore then
fails with "Malformed StorageGeneration"), so `start` adds it.
"""

from __future__ import annotations

import socket

BUCKET = "bkt"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _add_generation_header(download):
  def wrapped(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # Not found: the download already answered 404.
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

  return wrapped


def _patch_downloads() -> None:
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  if getattr(objects.download, "_adds_generation", False):
    return
  original = objects.download
  patched = _add_generation_header(original)
  patched._adds_generation = True
  objects.download = patched  # objects.get (alt=media) looks it up at call time.
  server.HANDLERS = tuple(
    (pattern, {method: patched if fn is original else fn for method, fn in methods.items()})
    for pattern, methods in server.HANDLERS
  )


def start():
  """Starts an in-memory emulator with bucket BUCKET; returns (server, environment variables)."""
  from gcp_storage_emulator.server import create_server

  _patch_downloads()
  port = _free_port()
  server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://localhost:{port}"
  env = {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "EPATH_USE_TF": "false",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }
  return server, env
