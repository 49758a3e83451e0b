"""Exercises fajax.train.paths on each root given (a local folder, a gs:// URL); prints JSON.

Run by tests/test_scale_out.py in a subprocess, with the GCS emulator's environment variables.
"""

import json
import os
import sys

from fajax.train import paths


def check(root) -> dict:
  folder = paths.join(root, "dir")
  paths.makedirs(folder)
  paths.write_text(paths.join(folder, "a.txt"), "one")
  paths.write_text(paths.join(folder, "a.txt"), "two")  # Replaced whole.
  for lines in (["x\n", "y\n"], ["z\n"]):  # Appends, across two openings.
    f = paths.open_append(paths.join(folder, "log"))
    for line in lines:
      f.write(line)
      f.flush()
    f.close()
  paths.makedirs(paths.join(folder, "sub", "deep"))
  paths.write_text(paths.join(folder, "sub", "deep", "b"), "b")
  paths.move(paths.join(folder, "sub"), paths.join(root, "moved"))
  mirror = paths.LocalMirror(paths.join(root, "events"))
  for text in ("e1", "e2"):
    with open(os.path.join(mirror.local, "events.out"), "a") as f:
      f.write(text)
    mirror.sync()
  mirror.close()
  return {
    "listdir": paths.listdir(folder),
    "a.txt": paths.read_text(paths.join(folder, "a.txt")),
    "log": paths.read_text(paths.join(folder, "log")),
    "moved": paths.read_text(paths.join(root, "moved", "deep", "b")),
    "moved is a folder": paths.isdir(paths.join(root, "moved")),
    "source gone": not paths.exists(paths.join(folder, "sub")),
    "events": paths.read_text(paths.join(root, "events", "events.out")),
  }


if __name__ == "__main__":
  print(json.dumps([check(root) for root in sys.argv[1:]]))
