"""The commands README.md, WORKSPACE.md and docs/*.md give, checked against the code.

Every shell command of the docs that runs this repository's code (`python -m launch.*`,
`python -m benchmarks.*`, `python -m fajax.*`, `bash launch/*.sh`) is extracted from the code
blocks and inline code spans, then checked cheaply: the module exists, every `--flag` is one the
launcher or benchmark defines, every `--config=experiments/<file>.py[:<arg>]` loads and its
`get_config(arg)` (and `get_sweep(arg)` for a sweep) accepts the argument, every `--config.<field>`
names a field of that config, and every repository path named (in a command or any code span)
exists. The cheapest commands then run for real, as subprocesses from the repository root: the
README's main job with `--emit_commands` (the config, its points and the flags through the real
launcher, nothing trained), the tiny run of docs/training.md with `--dry_run` (its workdir moved
to a temporary folder), and `python -m launch.report` on a finished run.
"""

import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "WORKSPACE.md"] + sorted(
  os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
_OURS = re.compile(
  r"(?:^|\s)(?:python -m (?:launch|benchmarks|fajax)\.|bash (?:launch|benchmarks)/)"
)
# Flags every absl program has (the launchers parse with absl).
_ABSL_FLAGS = {"verbosity", "v", "help", "helpfull", "logtostderr", "alsologtostderr", "log_dir"}
_PATH = re.compile(
  r"(?<![\w/.])((?:experiments|launch|benchmarks|docs|notebooks|tests|fajax)/[\w./-]+)"
)


def doc_commands(doc: str) -> list[str]:
  """The commands of `doc` that run this repository's code, one simple command each."""
  text = open(os.path.join(ROOT, doc)).read()
  found = []
  for block in _FENCE.findall(text):  # ``` blocks: a command per line, `\` continues it
    found += block.replace("\\\n", " ").splitlines()
  prose = re.sub(r"\n\s*", " ", _FENCE.sub("", text))  # an inline span may wrap across lines
  found += re.findall(r"`([^`]+)`", prose)
  commands = []
  for line in found:
    for part in re.split(r"&&|;|\|", line.split("  #")[0]):  # `a && b; c | d`, comments cut
      part = " ".join(part.split())
      if _OURS.search(part):
        commands.append(part)
  return commands


COMMANDS = sorted({(doc, command) for doc in DOCS for command in doc_commands(doc)})


def _module_and_args(command: str) -> tuple[str | None, list[str]]:
  """('launch.main', [its arguments]) of `... python -m launch.main --x=1 ...`; for
  `bash launch/x.sh ...`, (None, [its arguments])."""
  words = shlex.split(command.replace("$", "\\$"), posix=True)
  if "bash" in words:
    return None, words[words.index("bash") + 1 :]
  i = words.index("-m")
  return words[i + 1], words[i + 2 :]


def _defined_flags(module: str) -> set[str]:
  """The flags the module's source defines (absl's DEFINE_*, argparse's add_argument)."""
  source = open(importlib.util.find_spec(module).origin).read()
  names = re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source)
  names += re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source)
  return set(names) | (_ABSL_FLAGS if "absl" in source else set())


def _experiment(path: str):
  name = os.path.basename(path)[:-3]
  assert os.path.isfile(os.path.join(ROOT, path)), f"{path} does not exist"
  return importlib.import_module(f"experiments.{name}")


def test_the_docs_have_commands_to_check():
  docs = {doc for doc, _ in COMMANDS}
  assert {"README.md", "WORKSPACE.md", "docs/training.md", "docs/depth.md"} <= docs
  assert ("README.md", MAIN_JOB) in COMMANDS  # the README's main job, exactly


MAIN_JOB = "python -m launch.sweep --config=experiments/mnist_net.py --workdir=workdirs/mnist_table"


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}: {c}" for d, c in COMMANDS])
def test_doc_command_matches_the_code(doc, command):
  module, args = _module_and_args(command)
  for path in _PATH.findall(command):  # every file of the repository it names exists
    path = path.split(":")[0].rstrip(".")
    if "..." not in path and "<" not in path:
      assert os.path.exists(os.path.join(ROOT, path)), f"{doc}: {path} does not exist"
  if module is not None:
    assert importlib.util.find_spec(module), f"{doc}: no module {module}"
    defined = _defined_flags(module)
  config = None
  for arg in args:
    flag = re.match(r"--([\w.-]+)(?:=(.*))?$", arg)
    spec = re.match(r"(experiments/\w+\.py)(?::([\w,]+))?$", arg)  # bash launch/*.sh run SPEC
    if flag and flag.group(1) == "config":
      spec = re.match(r"(experiments/\w+\.py)(?::([\w,]+))?$", flag.group(2))
      assert spec, f"{doc}: --config={flag.group(2)} is not experiments/<file>.py[:<arg>]"
    if spec:
      experiment = _experiment(spec.group(1))
      config = experiment.get_config(spec.group(2))  # refuses an unknown row or modifier
      if module == "launch.sweep" or (module is None and "sweep" in args):
        assert experiment.get_sweep(spec.group(2))
    elif flag and flag.group(1).startswith("config."):
      if config is None:  # no config file given (`python -m launch.main ... --config.x=y`)
        from fajax.train import default_config

        config = default_config()
      field = flag.group(1).split(".")[1]
      assert field in config, f"{doc}: {arg} names no config field"
    elif flag and module is not None:
      assert flag.group(1) in defined, f"{doc}: {module} has no flag --{flag.group(1)}"


def test_every_repository_path_the_docs_name_exists():
  """Each `experiments/...`, `launch/...`, `fajax/...` (and docs, tests, notebooks, benchmarks)
  path in the docs' code spans and blocks is a file or folder of the repository."""
  missing = []
  for doc in DOCS:
    text = open(os.path.join(ROOT, doc)).read()
    spans = _FENCE.findall(text) + re.findall(r"`([^`]+)`", _FENCE.sub("", text))
    for span in spans:
      for path in _PATH.findall(span):
        path = path.split(":")[0].split("#")[0].rstrip(".,")
        if not any(c in path for c in "<*{") and not os.path.exists(os.path.join(ROOT, path)):
          missing.append(f"{doc}: {path}")
  assert not missing, missing


def _run(args, timeout=300):
  # One CPU device, as a user's command (conftest's 8 fake devices are for the tests).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )


def _with_workdir(command: str, workdir) -> list[str]:
  _, args = _module_and_args(command)
  return ["-m", _module_and_args(command)[0]] + [
    f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in args
  ]


def test_the_main_job_runs_through_the_sweep_launcher(tmp_path):
  """The README's main job with --emit_commands: the real launcher loads the config, builds every
  point's config and prints one `python -m launch.main` command per point (nothing trained; the
  static checks above load every other documented config and sweep)."""
  result = _run([*_with_workdir(MAIN_JOB, tmp_path), "--emit_commands"])
  assert result.returncode == 0, result.stderr[-2000:]
  emitted = result.stdout.splitlines()
  rows = ["bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn", "dfa", "densefa"]
  assert emitted == [
    f"python -m launch.main --config=experiments/mnist_net.py:{row} "
    f"--workdir={tmp_path / f'{row}-seed0'} --config.seed=0"
    for row in rows
  ]


def test_the_tiny_run_of_the_docs_compiles_and_the_report_reads_a_run(tmp_path):
  """docs/training.md's first command, with --dry_run (the launcher, the config and a compiled
  step, no training); then `python -m launch.report` on a finished run, and on none."""
  command = "python -m launch.main --config=experiments/tiny.py --workdir=/tmp/tiny"
  assert ("docs/training.md", command) in COMMANDS
  result = _run([*_with_workdir(command, tmp_path / "tiny"), "--dry_run"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "FLOPs per step" in result.stdout

  run = tmp_path / "runs" / "fa-seed0"  # a finished sweep point, as launch.sweep leaves it
  run.mkdir(parents=True)
  meta = {"column": "mnist", "row": "fa", "seed": 0, "dataset": "mnist5k"}
  (run / "experiment.json").write_text(json.dumps(meta))
  (run / "metrics.jsonl").write_text(json.dumps({"step": 9, "split": "test", "top1_error": 0.05}))
  report = _run(["-m", "launch.report", f"--out={tmp_path / 'report'}", str(tmp_path / "runs")])
  assert report.returncode == 0, report.stderr[-3000:]
  assert "| FA | 5.0 | 1 | 1.1 |" in report.stdout  # the label and the paper's number, from
  assert (tmp_path / "report" / "report.md").exists()  # experiments/mnist_net.py
  empty = _run(["-m", "launch.report", str(tmp_path / "report")])  # no runs: one sentence
  assert empty.returncode == 2 and "Traceback" not in empty.stderr
  assert empty.stderr.strip().startswith("Error: No finished runs")
