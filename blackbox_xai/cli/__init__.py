"""The ``blackbox-xai`` / ``bbx`` command line: the group from :mod:`.main` with the evaluation
and graph commands attached (:mod:`.common` holds what they share)."""

from .evaluate import compare_cmd, evaluate_cmd, sanity_cmd
from .graph import backward_cmd, expose_cmd, layers_cmd
from .main import cli, main

for _command in (layers_cmd, expose_cmd, backward_cmd, evaluate_cmd, compare_cmd, sanity_cmd):
    cli.add_command(_command)

__all__ = ["cli", "main"]
