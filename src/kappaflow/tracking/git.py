"""Git provenance of a run (commit sha and dirty flag), without failing outside a repository."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitInfo:
    """Git state of the working tree.

    Attributes:
        commit: ``git rev-parse HEAD`` (None outside a repository or before the first commit).
        dirty: tracked files differ from ``HEAD`` (None if unknown).
        branch: current branch name (None if detached or unknown).
    """

    commit: str | None
    dirty: bool | None
    branch: str | None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_info(path: str | Path) -> GitInfo:
    """Return the :class:`GitInfo` of the repository containing ``path``."""
    cwd = Path(path)
    commit = _git(["rev-parse", "HEAD"], cwd)
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd) if commit else None
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd) if commit else None
    return GitInfo(
        commit=commit,
        dirty=None if status is None else bool(status),
        branch=None if branch in (None, "HEAD") else branch,
    )
