"""Registry trust: what ``predict``/``screen`` accept from the MLflow registry, and how.

A registered κ model is an MLflow pyfunc logged as *models from code*: loading it with
``mlflow.pyfunc.load_model`` would execute the ``model_code.py`` and ``code/kappaflow`` stored
with it, i.e. code written by whoever registered the version. kappaflow's own load path
therefore never does that. It downloads only the pyfunc's ``ensemble`` artifact (plain data:
``ensemble.json``, ``domain.json``, ``train_embeddings.npy``, ``members/member-NN.pt`` state
dicts), checks it, and builds the ensemble with the *installed* kappaflow
(:func:`kappaflow.registry.pyfunc.load_ensemble_dir`: ``torch.load(weights_only=True)``,
``np.load(allow_pickle=False)``); nothing from the download is imported.

Checks on the downloaded directory, in order (any failure raises :class:`UntrustedModelError`):

1. layout: exactly ``ensemble.json``, ``domain.json``, ``train_embeddings.npy`` and the member
   files that ``ensemble.json`` lists (named ``members/member-NN.pt``), all regular files (no
   links, no extra files);
2. :func:`ensemble_sha256` of the member files + settings (graph settings, domain quantile),
   the digest the ``register`` stage computes, against the version's ``ensemble_sha256`` tag
   and, for the version that ``models/champion.json`` pins (the DVC-tracked record of the
   promotion decision, which a registry user cannot change), against that record too;
3. :func:`ensemble_dir_sha256` of every file of the directory (domain files included), against
   the ``ensemble_dir_sha256`` tag / champion.json entry where they exist (versions registered
   before that digest was recorded have only check 2).

The tag alone proves integrity, not origin (a user with EDIT permission on the registered model
can set tags); champion.json is what ties the champion to the ``register`` stage.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kappaflow.registry.domain import DOMAIN_FILE, EMBEDDINGS_FILE

#: Where ``mlflow.pyfunc.log_model(artifacts={"ensemble": dir})`` puts the ensemble directory,
#: relative to the logged model's root (fixed here, never read from the downloaded MLmodel).
ENSEMBLE_SUBPATH = "artifacts/ensemble"
SPEC_FILE = "ensemble.json"
#: Version tag / champion.json key of :func:`ensemble_sha256` and :func:`ensemble_dir_sha256`.
SHA_TAG = "ensemble_sha256"
DIR_SHA_TAG = "ensemble_dir_sha256"
_MEMBER_NAME = re.compile(r"members/member-\d{2,4}\.pt")


class UntrustedModelError(RuntimeError):
    """A registered model version failed verification; it must not be used."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, always read from disk (no memo: this is a trust check)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensemble_sha256(members: Sequence[str | Path], settings: Mapping[str, Any]) -> str:
    """Content hash of an ensemble: member file hashes (in order) + settings.

    Args:
        members: the members' export files, in ensemble order.
        settings: ``{"graph": GraphSettings.to_dict(), "quantile": domain quantile}``.

    Returns:
        Hex sha256.
    """
    h = hashlib.sha256()
    for p in members:
        h.update(file_sha256(p).encode())
    h.update(json.dumps(dict(settings), sort_keys=True).encode())
    return h.hexdigest()


def ensemble_dir_sha256(directory: str | Path) -> str:
    """Hex sha256 of every file of an ensemble directory: sorted relative paths + file hashes.

    Raises:
        UntrustedModelError: the directory holds a link or something other than files/folders.
    """
    d = Path(directory)
    h = hashlib.sha256()
    for rel in sorted(_files(d)):
        h.update(f"{rel}\0{file_sha256(d / rel)}\n".encode())
    return h.hexdigest()


def _files(d: Path) -> set[str]:
    """Relative POSIX paths of the regular files under ``d`` (links and specials refused)."""
    out = set()
    for p in d.rglob("*"):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise UntrustedModelError(f"{p.relative_to(d)}: not a regular file")
        if p.is_file():
            out.add(p.relative_to(d).as_posix())
    return out


def check_layout(directory: str | Path) -> dict[str, Any]:
    """Check that ``directory`` holds exactly an ensemble's files; return ``ensemble.json``.

    Raises:
        UntrustedModelError: a missing, extra, linked or misnamed file, or an unreadable spec.
    """
    d = Path(directory)
    if not (d / SPEC_FILE).is_file():
        raise UntrustedModelError(f"no {SPEC_FILE} in the ensemble artifact")
    try:
        spec = json.loads((d / SPEC_FILE).read_text())
        members = [str(m) for m in spec["members"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UntrustedModelError(f"unreadable {SPEC_FILE}: {exc}") from exc
    bad = [m for m in members if not _MEMBER_NAME.fullmatch(m)]
    if bad or not members or len(set(members)) != len(members):
        raise UntrustedModelError(f"{SPEC_FILE} lists unexpected member files {bad or members}")
    expected = {SPEC_FILE, DOMAIN_FILE, EMBEDDINGS_FILE, *members}
    found = _files(d)
    if found != expected:
        extra, missing = sorted(found - expected), sorted(expected - found)
        raise UntrustedModelError(
            f"ensemble artifact files differ from {SPEC_FILE}: extra {extra}, missing {missing}"
        )
    return spec


def directory_digest(directory: str | Path) -> str:
    """:func:`ensemble_sha256` of an ensemble directory, as the ``register`` stage computes it.

    Settings: ``graph`` from ``ensemble.json``, ``quantile`` from ``domain.json``.

    Raises:
        UntrustedModelError: see :func:`check_layout`; settings missing.
    """
    d = Path(directory)
    spec = check_layout(d)
    try:
        quantile = float(json.loads((d / DOMAIN_FILE).read_text())["quantile"])
        settings = {"graph": dict(spec["graph"]), "quantile": quantile}
    except (ValueError, KeyError, TypeError) as exc:
        raise UntrustedModelError(f"unreadable ensemble settings: {exc}") from exc
    return ensemble_sha256([d / m for m in spec["members"]], settings)


def verify_ensemble_dir(
    directory: str | Path,
    label: str,
    expected: Mapping[str, str | None],
    pinned: Mapping[str, str | None] | None = None,
    pinned_by: str = "models/champion.json",
) -> str:
    """Verify a downloaded ensemble directory against the recorded digests.

    Args:
        directory: the downloaded ``ensemble`` artifact.
        label: the version, for messages (``kappaflow-kappa v3``).
        expected: the version's tags (``ensemble_sha256`` required, ``ensemble_dir_sha256``
            checked when present).
        pinned: the same keys from champion.json when it pins this version (None: not pinned;
            then only the tags are checked).
        pinned_by: where ``pinned`` comes from, for messages.

    Returns:
        The verified :func:`ensemble_sha256`.

    Raises:
        UntrustedModelError: one line: which version, expected vs found digest, what to do.
    """
    fix = "run `dvc repro register` (and use the version it pins)"
    try:
        sha = directory_digest(directory)
    except UntrustedModelError as exc:
        raise UntrustedModelError(f"refusing {label}: {exc}; {fix}") from exc
    sources = [(f"its {SHA_TAG} tag", expected)]
    if pinned is not None:
        sources.append((pinned_by, pinned))
    for where, record in sources:
        want = record.get(SHA_TAG)
        if not want:
            raise UntrustedModelError(
                f"refusing {label}: no {SHA_TAG} in {where}, so it cannot be verified; {fix}"
            )
        if want != sha:
            raise UntrustedModelError(
                f"refusing {label}: ensemble sha256 {sha} != {want} recorded in {where} "
                f"(the registered artifact changed after registration); {fix}"
            )
    dir_sha: str | None = None
    for where, record in sources:
        want = record.get(DIR_SHA_TAG)
        if want:
            dir_sha = dir_sha or ensemble_dir_sha256(directory)
            if want != dir_sha:
                raise UntrustedModelError(
                    f"refusing {label}: ensemble directory sha256 {dir_sha} != {want} recorded "
                    f"in {where} (the registered artifact changed after registration); {fix}"
                )
    return sha
