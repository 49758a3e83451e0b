"""The command-line launchers, run as modules from the repository root: `python -m launch.main`,
`python -m launch.sweep`, `python -m launch.report`."""
