"""Reference models that every learned model must beat.

All baselines share a small scikit-learn-like interface: ``fit(X, y) -> self`` and
``predict(X) -> np.ndarray``, with ``y`` and predictions in *raw* units (κ in W/m/K). With
``transform="log10"`` (κ) the model is fitted on log10 y and predictions are transformed back with
10**·; the target transform is scikit-learn's ``TransformedTargetRegressor``.

* :class:`MeanPredictor`: constant mean of the (transformed) training targets, i.e. the geometric
  mean of κ for ``log10``.
* :class:`MedianPredictor`: constant median of the (transformed) training targets.
* :class:`MagpieRandomForest`: ``RandomForestRegressor`` on matminer Magpie composition features
  (:func:`kappaflow.features.composition.magpie_features`); ``X`` is a sequence of formulas or a
  precomputed 2-D feature matrix.
* :class:`MagpieExtraTrees`: the same with extremely randomized trees (``max_features`` 0.5), the
  composition route of the ``stack`` strategy: reported beside it so that what the transferred
  structure route adds is a paired difference on the same folds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Self

import numpy as np
from numpy.typing import ArrayLike
from sklearn.compose import TransformedTargetRegressor
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

from kappaflow.evaluation.metrics import basic_metrics, regression_metrics

Transform = Literal["none", "log10"]


def _exp10(x: np.ndarray) -> np.ndarray:
    return np.power(10.0, x)


def _check_transform(transform: str) -> None:
    if transform not in ("none", "log10"):
        raise ValueError(f"unknown target transform {transform!r}; expected 'none' or 'log10'")


class Baseline:
    """Base class: a scikit-learn regressor behind a log10 / identity target transform.

    Attributes:
        transform: ``"log10"`` (κ, W/m/K) or ``"none"``.
    """

    transform: Transform

    def _regressor(self) -> Any:
        raise NotImplementedError

    def _features(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def _wrap(self) -> TransformedTargetRegressor:
        _check_transform(self.transform)
        if self.transform == "log10":
            return TransformedTargetRegressor(
                regressor=self._regressor(), func=np.log10, inverse_func=_exp10, check_inverse=False
            )
        return TransformedTargetRegressor(regressor=self._regressor())

    def fit(self, X: Any, y: ArrayLike) -> Self:
        """Fit on training inputs and raw targets.

        Args:
            X: inputs (see the class docstring); only the length matters for constant models.
            y: raw targets (κ in W/m/K, must be > 0 and finite for ``log10``).

        Returns:
            self.
        """
        target = np.asarray(y, dtype=np.float64).reshape(-1)
        feats = self._features(X)
        if len(feats) != len(target):
            raise ValueError(f"{len(feats)} inputs but {len(target)} targets")
        if len(target) == 0:
            raise ValueError("cannot fit on zero rows")
        if not np.all(np.isfinite(target)):
            raise ValueError("training targets contain NaN/inf")
        if self.transform == "log10" and np.any(target <= 0):
            raise ValueError("log10 transform needs positive targets (κ > 0 W/m/K)")
        self.model_ = self._wrap().fit(feats, target)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predict raw-unit targets (κ in W/m/K for ``log10``).

        Args:
            X: inputs (see the class docstring).

        Returns:
            1-D float array, one prediction per input row.
        """
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        return np.asarray(self.model_.predict(self._features(X)), dtype=np.float64).reshape(-1)


class _ConstantPredictor(Baseline):
    strategy: str = "mean"

    def __init__(self, transform: Transform = "none") -> None:
        """Create the baseline.

        Args:
            transform: ``"log10"`` for κ (statistic taken over log10 κ), ``"none"`` otherwise.
        """
        _check_transform(transform)
        self.transform = transform

    def _regressor(self) -> DummyRegressor:
        return DummyRegressor(strategy=self.strategy)

    def _features(self, X: Any) -> np.ndarray:
        return np.zeros((len(X), 1))

    @property
    def constant_(self) -> float:
        """The fitted constant prediction in raw units (κ in W/m/K for ``log10``)."""
        return float(self.predict([0])[0])


class MeanPredictor(_ConstantPredictor):
    """Predict the mean of the training targets (in log10 space for ``transform="log10"``)."""

    strategy = "mean"


class MedianPredictor(_ConstantPredictor):
    """Predict the median of the training targets (in log10 space for ``transform="log10"``)."""

    strategy = "median"


class MagpieRandomForest(Baseline):
    """Random forest on Magpie composition features (matminer ``ElementProperty`` "magpie").

    ``X`` is either a sequence of formula strings (featurized with
    :func:`kappaflow.features.composition.magpie_features`) or a precomputed 2-D numeric
    feature matrix [N, F].
    """

    def __init__(
        self,
        transform: Transform = "none",
        n_estimators: int = 500,
        max_features: float | str | None = 1.0 / 3.0,
        min_samples_leaf: int = 1,
        random_state: int = 0,
        n_jobs: int | None = None,
        featurizer: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        """Create the model.

        Args:
            transform: ``"log10"`` to fit on log10 κ (W/m/K), ``"none"`` otherwise.
            n_estimators: number of trees.
            max_features: features per split (sklearn semantics; 1/3 is the usual regression
                default of Breiman's random forests).
            min_samples_leaf: minimum samples per leaf.
            random_state: seed of the forest.
            n_jobs: parallel jobs for sklearn (None = 1).
            featurizer: formulas -> [N, F] features; defaults to ``magpie_features``.
        """
        _check_transform(transform)
        self.transform = transform
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.featurizer = featurizer

    #: The scikit-learn forest class (same keyword arguments for both forests).
    forest_class: type = RandomForestRegressor

    def _regressor(self) -> Any:
        return self.forest_class(
            n_estimators=self.n_estimators,
            max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        )

    def _features(self, X: Any) -> np.ndarray:
        if isinstance(X, np.ndarray) and X.ndim == 2 and np.issubdtype(X.dtype, np.number):
            return X.astype(np.float64, copy=False)
        formulas = [str(x) for x in X]
        featurize = self.featurizer
        if featurize is None:
            from kappaflow.features.composition import magpie_features

            featurize = magpie_features
        feats = np.asarray(featurize(formulas), dtype=np.float64)
        if feats.ndim != 2 or len(feats) != len(formulas):
            raise ValueError(
                f"featurizer returned shape {feats.shape} for {len(formulas)} formulas"
            )
        return feats

    @property
    def feature_importances_(self) -> np.ndarray:
        """Impurity-based feature importances of the fitted forest, [F]."""
        if not hasattr(self, "model_"):
            raise RuntimeError("MagpieRandomForest is not fitted; call fit() first")
        return self.model_.regressor_.feature_importances_


#: Extra-trees settings of :class:`MagpieExtraTrees` and of the ``stack`` strategy's composition
#: route (:mod:`kappaflow.transfer.stacking`).
EXTRA_TREES_DEFAULTS = {"n_estimators": 500, "max_features": 0.5, "min_samples_leaf": 1}

#: scikit-learn jobs of the forests a stage fits (the baselines, the stack's composition route,
#: the domain study's error model): every core. A forest's predictions do not depend on it (its
#: trees are seeded from ``random_state`` before they are dealt to the workers).
FOREST_N_JOBS = -1


class MagpieExtraTrees(MagpieRandomForest):
    """Extremely randomized trees on Magpie composition features (same inputs as the forest).

    Defaults are :data:`EXTRA_TREES_DEFAULTS` (500 trees, ``max_features`` 0.5).
    """

    forest_class = ExtraTreesRegressor

    def __init__(
        self,
        transform: Transform = "none",
        n_estimators: int = EXTRA_TREES_DEFAULTS["n_estimators"],
        max_features: float | str | None = EXTRA_TREES_DEFAULTS["max_features"],
        min_samples_leaf: int = EXTRA_TREES_DEFAULTS["min_samples_leaf"],
        random_state: int = 0,
        n_jobs: int | None = None,
        featurizer: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        """Create the model (arguments as :class:`MagpieRandomForest`)."""
        super().__init__(
            transform,
            n_estimators,
            max_features,
            min_samples_leaf,
            random_state,
            n_jobs,
            featurizer,
        )


def evaluate_baseline(
    model: Baseline,
    X_train: Any,
    y_train: ArrayLike,
    X_test: Any,
    y_test: ArrayLike,
) -> dict[str, float]:
    """Fit ``model`` on the training part and score it on the test part.

    Args:
        model: an unfitted baseline.
        X_train: training inputs.
        y_train: training targets, raw units.
        X_test: test inputs.
        y_test: test targets, raw units.

    Returns:
        :func:`~kappaflow.evaluation.metrics.regression_metrics` for ``transform="log10"`` (κ),
        else :func:`~kappaflow.evaluation.metrics.basic_metrics`.
    """
    pred = model.fit(X_train, y_train).predict(X_test)
    if model.transform == "log10":
        return regression_metrics(y_test, pred)
    return basic_metrics(y_test, pred)
