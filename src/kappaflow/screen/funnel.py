"""Who scores which crystal: the champion for everything, or the funnel of :mod:`.surrogate`.

:class:`ChampionScorer` streams any subset of the pool through the champion ensemble
(:func:`kappaflow.registry.predictor.predict_stream`: featurize, ensemble, domain flags).
:func:`funnel_scores` runs the funnel: champion on the teacher sample, the student on the rest,
the champion again on the student's shortlist. Both return one frame aligned with
``pool.index``: the predictor's :data:`~kappaflow.registry.predictor.COLUMNS` plus
``spacegroup`` (user files: computed while parsing) and ``scored_by`` (:data:`CHAMPION` or
:data:`SURROGATE`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kappaflow.registry.predictor import COLUMNS, Item, predict_stream
from kappaflow.screen.pool import Pool, iter_items
from kappaflow.screen.surrogate import (
    FunnelSettings,
    agreement,
    element_count_matrix,
    fit_student,
    pool_features,
    read_pool_arrays,
    shortlist,
)

if TYPE_CHECKING:
    from kappaflow.data.validation import ValidationOptions
    from kappaflow.registry.domain import DomainInfo
    from kappaflow.registry.ensemble import KappaEnsemble

log = logging.getLogger(__name__)

CHAMPION = "champion"
SURROGATE = "surrogate"
#: Quarantine reason of a prepared row whose student features are not finite.
SURROGATE_NONFINITE = "surrogate_features_nonfinite"
NONFINITE_DETAIL = "a Magpie statistic or cell scalar of the cell is not finite"


@dataclass
class ChampionScorer:
    """Score rows of ``pool.index`` (by position) with the champion ensemble.

    Attributes:
        pool: the pool.
        ensemble: the champion's members.
        domain: its training domain (None: everything in domain).
        batch_size: crystals per ensemble batch.
        symprec: symmetry tolerance (Å) for user files' space groups.
        symmetry_backend: ``spglib`` / ``moyopy``.
        options: parsing limits and checks of user files.
    """

    pool: Pool
    ensemble: KappaEnsemble
    domain: DomainInfo | None
    batch_size: int
    symprec: float
    symmetry_backend: str
    options: ValidationOptions

    def score(self, positions: np.ndarray, bar: Any = None) -> pd.DataFrame:
        """Scores of ``pool.index.iloc[positions]``, in that order (``bar``: tqdm to update)."""
        sub = replace(self.pool, index=self.pool.index.iloc[positions].reset_index(drop=True))
        streamed_sg: list[int] = []

        def tap(items: Iterator[Item]) -> Iterator[Item]:
            for it in items:  # space groups of user files are only known after parsing
                streamed_sg.append(it.spacegroup)
                yield it

        items = iter_items(
            sub, self.ensemble.graph.cutoff, self.symprec, self.symmetry_backend, self.options
        )
        frames = []
        for frame in predict_stream(self.ensemble, self.domain, tap(items), self.batch_size):
            frames.append(frame)
            if bar is not None:
                bar.update(len(frame))
        scored = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
        if (
            len(scored) != len(sub.index)
            or not (scored["id"].to_numpy() == sub.index["id"].to_numpy()).all()
        ):
            raise RuntimeError("screen: champion scores are not aligned with the pool rows")
        sg = np.asarray(streamed_sg, dtype=np.int64)
        scored["spacegroup"] = np.where(sg != -1, sg, sub.index["spacegroup"].to_numpy())
        scored["scored_by"] = CHAMPION
        return scored


def _surrogate_rows(
    index: pd.DataFrame,
    log10_kappa: np.ndarray,
    counts: np.ndarray,
    domain: DomainInfo | None,
) -> pd.DataFrame:
    """Rows only the student scored: κ from its log10 κ; no σ, intervals or embedding distance.

    ``in_domain`` checks the elements only (the embedding distance needs the champion): a row
    with an element absent from the champion's training materials is out of domain with the
    champion's reason text. A non-finite prediction is an error row.
    """
    from kappaflow.registry.domain import element_symbols

    n = len(index)
    finite = np.isfinite(log10_kappa)
    reasons = np.full(n, "", dtype=object)
    if domain is not None:
        known = np.zeros(counts.shape[1], dtype=bool)
        known[[z for z in domain.elements if z < counts.shape[1]]] = True
        unseen = (counts > 0) & ~known
        for i in np.flatnonzero(unseen.any(axis=1)):
            reasons[i] = f"unseen elements: {', '.join(element_symbols(np.flatnonzero(unseen[i])))}"
    nan = np.full(n, np.nan)
    return pd.DataFrame(
        {
            "id": index["id"].to_numpy(),
            "formula": index["formula"].to_numpy(),
            "kappa": np.where(finite, 10.0 ** np.where(finite, log10_kappa, 0.0), np.nan),
            "log10_kappa": np.where(finite, log10_kappa, np.nan),
            "sigma_log10": nan,
            "kappa_lo68": nan,
            "kappa_hi68": nan,
            "kappa_lo95": nan,
            "kappa_hi95": nan,
            "in_domain": finite & (reasons == ""),
            "ood_reason": reasons,
            "nn_distance": nan,
            "error": np.where(finite, "", f"{SURROGATE_NONFINITE}: {NONFINITE_DETAIL}"),
            "spacegroup": index["spacegroup"].to_numpy(),
            "scored_by": SURROGATE,
        }
    )


def funnel_scores(
    pool: Pool, champion: ChampionScorer, settings: FunnelSettings, seed: int, bar: Any = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score the pool through the funnel (see :mod:`kappaflow.screen.surrogate`).

    Args:
        pool: the pool (prepared rows + user files).
        champion: scores any rows with the champion.
        settings: ``screen.funnel``.
        seed: seeds the teacher sample, the hold-out split and the trees.
        bar: tqdm over ``pool.n_total`` (champion rows as scored, student rows at once).

    Returns:
        ``(scores aligned with pool.index, tier-1 record)``; the record holds the counts,
        the agreement on the held-out teacher rows, the hold-out pairs (for the plot) and the
        seconds of each phase.
    """
    index = pool.index.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    prepared = np.flatnonzero(index["row"].to_numpy() >= 0)
    user = np.flatnonzero(index["row"].to_numpy() < 0)
    teach = np.sort(rng.choice(prepared, size=settings.teacher_size, replace=False))
    rest = np.setdiff1d(prepared, teach)
    log.info(
        "screen funnel: the champion scores %d teacher rows + %d user files + 2 x %d shortlisted; "
        "the student (extra trees on Magpie + cell scalars) the other ~%d of %d",
        len(teach), len(user), settings.shortlist, len(rest) - 2 * settings.shortlist,
        pool.n_total,
    )  # fmt: skip
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    teacher = champion.score(np.concatenate([teach, user]), bar)
    seconds["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    lattices, numbers = read_pool_arrays(index.iloc[prepared])
    counts_all = element_count_matrix(numbers)
    x_all = pool_features(index["spacegroup"].to_numpy()[prepared], lattices, numbers, counts_all)
    at = np.full(len(index), -1)
    at[prepared] = np.arange(len(prepared))
    usable = np.isfinite(x_all).all(axis=1)
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    y = teacher["log10_kappa"].to_numpy(float)[: len(teach)]
    fit_rows = np.flatnonzero(np.isfinite(y) & usable[at[teach]])
    held = rng.random(len(fit_rows)) < settings.holdout_fraction
    student = fit_student(x_all[at[teach[fit_rows[~held]]]], y[fit_rows[~held]], settings, seed)
    y_held = y[fit_rows[held]]
    s_held = student.predict(x_all[at[teach[fit_rows[held]]]]) if held.any() else np.zeros(0)
    seconds["student_fit"] = time.perf_counter() - t

    t = time.perf_counter()
    ok_mask = usable[at[rest]]
    rest_ok = rest[ok_mask]
    pred = np.full(len(rest), np.nan)
    if len(rest_ok):
        pred[ok_mask] = student.predict(x_all[at[rest_ok]])
    seconds["student_predict"] = time.perf_counter() - t
    surrogate = _surrogate_rows(index.iloc[rest], pred, counts_all[at[rest]], champion.domain)
    picked = shortlist(pred[ok_mask], settings.shortlist)
    short = rest_ok[picked]
    if bar is not None:
        bar.update(len(rest) - len(short))

    t = time.perf_counter()
    rescored = champion.score(short, bar)
    seconds["shortlist"] = time.perf_counter() - t

    keep = ~np.isin(rest, short)
    parts = [
        teacher.assign(_pos=np.concatenate([teach, user])),
        surrogate.loc[keep].assign(_pos=rest[keep]),
        rescored.assign(_pos=short),
    ]
    scored = pd.concat(parts, ignore_index=True).sort_values("_pos", kind="stable")
    if not (scored["_pos"].to_numpy() == np.arange(len(index))).all():
        raise RuntimeError("screen funnel: a pool row was scored twice or not at all")
    scored = scored.drop(columns="_pos").reset_index(drop=True)
    n_champion = int((scored["scored_by"] == CHAMPION).sum())
    record: dict[str, Any] = {
        "teacher_size": len(teach),
        "n_user_files": len(user),
        "n_student_fit": int((~held).sum()),
        "n_shortlisted": len(short),
        "n_champion": n_champion,
        "n_surrogate": len(index) - n_champion,
        "agreement": agreement(s_held, y_held, settings.top_fraction) if len(y_held) > 2 else {},
        "holdout": {"student": s_held.tolist(), "champion": y_held.tolist()},
        "seconds": seconds,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
    }
    return scored, record
