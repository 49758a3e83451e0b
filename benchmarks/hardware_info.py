"""What the benchmarks ran on: shared by every script's results header."""

import platform


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (platform's guess where that file is missing)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine() or "unknown"
