"""Argument plumbing shared by the ``kappaflow`` subcommand modules (argparse only: fast import).

``kappaflow.tracking.server`` builds its ``server`` subcommand itself: ``tracking`` sits below
``cli`` and must not import it.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Help of every ``--model-uri`` option.
MODEL_URI_HELP = "MLflow model URI (default: models:/<name>@champion)"


def add_command(subparsers: Any, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """Add the subcommand ``name``; its ``--help`` shows ``doc`` verbatim.

    Args:
        subparsers: the parent parser's ``add_subparsers()`` object.
        name: the subcommand.
        help: one line for the parent's command list.
        doc: the description ``--help`` prints: plain text for users (no reST markup, no
            implementation notes; ``tests/test_cli_help.py`` checks).
    """
    return subparsers.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_model_uri(parser: argparse.ArgumentParser) -> None:
    """Add ``--model-uri`` (None: the champion of ``registry.model_name``)."""
    parser.add_argument("--model-uri", help=MODEL_URI_HELP)
