"""User mistakes: one exception type the library raises, one sentence the launchers print.

The library raises `UserError` (a ValueError) for whatever the user can fix: a bad config value, a
missing dataset, a batch larger than the data, a workdir that cannot be used or is in use, a resume
under a changed config. The launchers wrap their `main` with `one_sentence_errors` and parse flags
with `parse_flags`: a user mistake, a command line absl or ml_collections refuses, or a run stopped
by a non-finite loss then prints one line `Error: <sentence>` to stderr and exits non-zero, with no
traceback. `FAJAX_TRACEBACK=1` (or `--verbosity=1` once flags are parsed) shows the traceback.

Anything else (a bug, or `fajax.train.Preempted`, which has its own exit status) passes through.
"""

from __future__ import annotations

import functools
import os
import sys

from absl import flags, logging

TRACEBACK_ENV = "FAJAX_TRACEBACK"
USER_ERROR_STATUS = 2  # A mistake in the command, config, data or workdir.
NONFINITE_STATUS = 3  # The loss became non-finite; the last good state is checkpointed.


class UserError(ValueError):
  """A mistake the user can fix; its message is one sentence saying what to do."""


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite and config.on_nan is 'stop', or with 'skip' it stayed so for
  config.max_consecutive_skips steps in a row."""


def _show_traceback() -> bool:
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    return True
  return logging.get_verbosity() >= 1


def _exit(message: str, status: int):
  print(f"Error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _one_line(error: BaseException) -> str:
  """The error's message on one line: the last line of a message that embeds a traceback."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if len(lines) > 1 and "Traceback (most recent call last)" in str(error):
    # ml_collections wraps a failing get_config() as "Error whilst parsing...\n<traceback>".
    kind, _, message = lines[-1].partition(": ")
    return message or kind
  return " ".join(lines)


def one_sentence_errors(main):
  """Wraps a launcher's `main(argv)`: user mistakes and non-finite stops become one sentence."""

  @functools.wraps(main)
  def wrapper(argv):
    try:
      return main(argv)
    except (UserError, OSError) as e:  # OSError: a file or folder the run needs is unusable.
      if _show_traceback():
        raise
      _exit(_one_line(e), USER_ERROR_STATUS)
    except NonFiniteLossError as e:
      if _show_traceback():
        raise
      _exit(_one_line(e), NONFINITE_STATUS)

  return wrapper


def parse_flags(argv):
  """absl's flag parsing, with a refused command line (a missing or failing config file, a bad
  override) as one sentence instead of a traceback or absl's hint to read the flag help."""
  for arg in argv[1:]:
    if arg.startswith(("--config=", "-config=")):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not os.path.isfile(path) and os.environ.get(TRACEBACK_ENV, "") in ("", "0"):
        _exit(
          f"The config file {path} does not exist; give --config=<an experiment file>[:<arg>], "
          "e.g. --config=experiments/tiny.py.",
          USER_ERROR_STATUS,
        )
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # absl and ml_collections raise many types; all mean a bad command line.
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
      raise
    _exit(_one_line(e), USER_ERROR_STATUS)
