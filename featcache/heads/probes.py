"""scikit-learn estimators around the heads, so cached features go into `cross_val_score`, a `Pipeline`,
`GridSearchCV` and `clone`: `RidgeProbe` wraps `RidgeHead` (exact ridge, alpha chosen by validation R2) and
`MLPProbe` a registry head trained by `train_head` (early stopping on validation R2). Both are public as
`featcache.sklearn`.

They follow scikit-learn's estimator rules: `__init__` stores its parameters unchanged (they are checked in
`fit`, so `set_params` and `clone` never fail), learned attributes end in `_`, `fit` validates its input
with `sklearn.utils.validation.validate_data` (which sets `n_features_in_`) and returns self, and both take
one target or several (multi-output tags).

Validation rows: each head chooses something (alpha, the stopping epoch) on rows it is not fitted on. As
scikit-learn's MLPRegressor does for early stopping, `validation_fraction` of the rows given to `fit` is split
off with a seeded shuffle (`random_state`) and the head is fitted on the rest. Rows that are several noise
draws of one spectrum would then land on both sides: fit on one draw (`cache.features(..., draw=0)`).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ..common.errors import FeatcacheError
from .recipe import DEFAULT_DROPOUT, DEFAULT_HIDDEN, TrainRecipe
from .registry import create_head, is_trainable
from .ridge import DEFAULT_ALPHA_GRID
from .training import train_head

FLOAT_DTYPES = (np.float64, np.float32)  # float32 features stay float32 (no copy of a large cache)
DEFAULT_VALIDATION_FRACTION = 0.1


class ProbeError(FeatcacheError, ValueError):
    """A probe's input or parameter mistake: a FeatcacheError (one line, as everywhere in featcache) that is
    also the ValueError scikit-learn's tools expect from an estimator given bad input."""


@contextlib.contextmanager
def _as_probe_errors() -> Iterator[None]:
    """The wrapped heads raise FeatcacheError; a probe raises the same message as a ProbeError."""
    try:
        yield
    except ProbeError:
        raise
    except FeatcacheError as exc:
        raise ProbeError(str(exc)) from None


def _seed(random_state: Any) -> int:
    """An int seed for torch and the validation split: an int is used as it is, None or a RandomState draws one."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _validation_split(X: np.ndarray, y: np.ndarray, fraction: Any, seed: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_fit, X_val, y_fit, y_val): a seeded shuffle split keeping at least two rows on each side."""
    if not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) < 1.0:
        raise ProbeError(f"validation_fraction must be a number in (0, 1), got {fraction!r}")
    n_val = max(2, int(np.ceil(float(fraction) * X.shape[0])))
    if X.shape[0] - n_val < 2:
        raise ProbeError(f"n_samples = {X.shape[0]} is too few to split off validation rows "
                         f"(validation_fraction {fraction}); give at least 4 rows")
    X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=n_val, random_state=seed)
    return X_fit, X_val, y_fit, y_val


def _n_outputs(y: np.ndarray) -> int:
    return 1 if y.ndim == 1 else int(y.shape[1])


class _Probe(RegressorMixin, BaseEstimator):
    """What both probes share: input validation and scikit-learn's tags (several targets are supported)."""

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _validated_fit_data(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        return validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=FLOAT_DTYPES,
                             ensure_min_samples=2)

    def _validated_predict_data(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=FLOAT_DTYPES)


class RidgeProbe(_Probe):
    """featcache's exact ridge (standardised features, intercept) as a scikit-learn regressor.

    alphas / alpha_grid / scale_alphas are RidgeHead's: relative alphas (scaled by the number of fit rows),
    by default the log grid 1e-4 .. 1e6 of 21 values. With more than one alpha, alpha is chosen by validation
    R2 on `validation_fraction` of the rows (seeded by random_state) and the head keeps the fit on the others;
    a single alpha fits on every row. Learned: `coef_` (scikit-learn's layout: (n_features,) or
    (n_targets, n_features)), `intercept_`, `alpha_` (effective, as scikit-learn's Ridge takes it),
    `val_r2_`, and `head_` (the RidgeHead).
    """

    def __init__(self, alphas: Any = None, alpha_grid: tuple[float, float, int] = DEFAULT_ALPHA_GRID,
                 scale_alphas: bool = True, validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                 random_state: Any = 0) -> None:
        self.alphas = alphas
        self.alpha_grid = alpha_grid
        self.scale_alphas = scale_alphas
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> RidgeProbe:
        X, y = self._validated_fit_data(X, y)
        with _as_probe_errors():
            head = create_head("ridge", X.shape[1], _n_outputs(y), alphas=self.alphas,
                               alpha_grid=tuple(self.alpha_grid), scale_alphas=bool(self.scale_alphas))
            if head.relative_alphas().size > 1:
                X_fit, X_val, y_fit, y_val = _validation_split(X, y, self.validation_fraction,
                                                               _seed(self.random_state))
                head.fit(X_fit, y_fit, X_val, y_val)
            else:
                head.fit(X, y)
        self.head_ = head
        self.coef_ = np.asarray(head.coef_).T
        self.intercept_ = head.intercept_
        self.alpha_ = head.alpha_
        self.val_r2_ = head.val_r2_
        return self

    def predict(self, X: Any) -> np.ndarray:
        X = self._validated_predict_data(X)
        return self.head_.predict(X)


_RECIPE = TrainRecipe()


class MLPProbe(_Probe):
    """A torch head of the registry (`mlp_1` by default; `linear`, `mlp_2`) trained by featcache's loop, as a
    scikit-learn regressor: standardised features and targets, AdamW, the plateau schedule, gradient clipping,
    early stopping on validation R2 keeping the best weights (the defaults are TrainRecipe's, the CLI's).

    validation_fraction of the rows (seeded by random_state) is the validation split; 0 or None trains
    max_epochs on every row and keeps the last epoch. random_state seeds the split, the initialisation, the
    shuffling and dropout: an int gives the same model every time. Learned: `model_` (the torch module),
    `result_` (featcache's TrainResult), `best_epoch_`, `best_val_r2_`, `history_`.
    """

    def __init__(self, head: str = "mlp_1", hidden: int = DEFAULT_HIDDEN, dropout: float = DEFAULT_DROPOUT,
                 lr: float = _RECIPE.lr, weight_decay: float = _RECIPE.weight_decay,
                 batch_size: int = _RECIPE.batch_size, max_epochs: int = _RECIPE.max_epochs,
                 patience: int = _RECIPE.patience, grad_clip: float | None = _RECIPE.grad_clip,
                 validation_fraction: float | None = DEFAULT_VALIDATION_FRACTION, random_state: Any = _RECIPE.seed,
                 device: str = "cpu", num_threads: int | None = None, verbose: bool = False) -> None:
        self.head = head
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.grad_clip = grad_clip
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.num_threads = num_threads
        self.verbose = verbose

    def recipe(self, seed: int) -> TrainRecipe:
        """The training recipe these parameters spell (validated)."""
        recipe = TrainRecipe(lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                             max_epochs=self.max_epochs, patience=self.patience, grad_clip=self.grad_clip, seed=seed)
        recipe.validate()
        return recipe

    def fit(self, X: Any, y: Any) -> MLPProbe:
        X, y = self._validated_fit_data(X, y)
        seed = _seed(self.random_state)
        with _as_probe_errors():
            if not is_trainable(self.head):
                raise ProbeError(f"head '{self.head}' is closed-form, not trained by gradient descent: use RidgeProbe")
            recipe = self.recipe(seed)
            model = create_head(self.head, X.shape[1], _n_outputs(y), hidden=self.hidden, dropout=self.dropout,
                                seed=seed)
            X_val = y_val = None
            if self.validation_fraction:
                X, X_val, y, y_val = _validation_split(X, y, self.validation_fraction, seed)
            result = train_head(model, X, y, X_val, y_val, recipe, device=self.device, progress=bool(self.verbose),
                                desc=f"{self.head} probe", num_threads=self.num_threads)
        self.result_ = result
        self.model_ = result.model
        self.best_epoch_ = result.best_epoch
        self.best_val_r2_ = result.best_val_r2
        self.history_ = result.history
        return self

    def predict(self, X: Any) -> np.ndarray:
        X = self._validated_predict_data(X)
        return self.result_.predict(X, batch_size=_RECIPE.eval_batch_size)
