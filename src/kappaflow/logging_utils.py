"""Logging set-up shared by the pipeline entry points and the CLI."""

from __future__ import annotations

import logging
import os
import warnings


def setup_logging(level: str | None = None) -> None:
    """Configure root logging (``KAPPAFLOW_LOG_LEVEL``, default INFO) and quiet noisy libraries."""
    logging.basicConfig(
        level=(level or os.environ.get("KAPPAFLOW_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow.store", "urllib3", "matplotlib", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    warnings.filterwarnings("ignore", message=".*No Pauling electronegativity.*")
