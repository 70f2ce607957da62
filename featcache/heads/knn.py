"""Exact k-nearest-neighbour regression on train-standardised features, k chosen by validation R2.

Why a kNN head: it asks the encoder a different question from ridge and the MLPs -- are spectra with
similar labels *close* in feature space, with no fitted map at all? It is also the one head whose saved
form holds the training rows: `featcache predict` needs them, so head.pt stores the standardised train
features (float32) and their targets.

Exact and fast: distances are squared Euclidean, ||q||^2 - 2 q.x + ||x||^2, in float64 blocked matrix
products in torch (a block of query rows against all train rows, then one top-k per block), the same
formula scikit-learn's brute-force search uses, so predictions equal KNeighborsRegressor(n_neighbors=k)
on the same standardised arrays. The neighbours of every validation row are found once for the largest k
of the grid; every smaller k is a prefix of that sorted list, so the whole grid costs one search.

Weights: 'uniform' (the mean of the k targets) or 'distance' (weights 1/d; rows at distance 0 take all the
weight, as in scikit-learn). Multi-target: one k shared by all targets, chosen by the mean validation R2.

Larger than memory: when the train rows of a cache (a lazy FeatureMatrix), loaded and standardised, would
exceed `max_memory`, they are never loaded. The standardisation is one streamed pass (the same float64
moments), every search reads the train rows block by block from the cache and merges each block's nearest
rows into a running top-k (the same distances, so the same neighbours), and head.pt refers to the cache's
rows (path, fingerprint, split, features, draw, subset) instead of holding them: `featcache predict` reopens
that cache and refuses one whose fingerprint changed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..common.constraints import StrOptions
from ..common.errors import FeatcacheError
from .entry import FitRows, HeadEntry, HeadOption, register
from .recipe import KNN_WEIGHTS
from .standardise import column_moments, is_constant, target_name
from .streaming import parse_memory

IN_MEMORY_BYTES_PER_VALUE = 24  # the rows loaded (float32), a float64 copy standardising them, z in float32 and
# float64: what the in-memory search holds per train value, and what a streamed block holds per value

DEFAULT_KS: tuple[int, ...] = tuple(2 ** i for i in range(9))  # 1, 2, 4, ..., 256
WEIGHTS = KNN_WEIGHTS
BLOCK_ELEMENTS = 1 << 24  # query rows x train rows per block of distances (128 MB of float64)


def parse_ks(text: str | None) -> list[int] | None:
    """--knn-k 1,2,4,8 (None: the default grid)."""
    if not text:
        return None
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FeatcacheError(f"--knn-k {text}: expected comma-separated whole numbers, e.g. 1,4,16") from None
    if not ks or min(ks) < 1:
        raise FeatcacheError(f"--knn-k {text}: every k must be a positive whole number")
    return ks


def check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise FeatcacheError(f"--knn-weights {weights}: choose from: {', '.join(WEIGHTS)}")
    return weights


class KNNHead:
    """kNN regression with a validation-chosen k (never test). ks: the grid (default 1..256, powers of 2;
    values above n_train are dropped); weights: 'uniform' or 'distance'."""

    def __init__(self, ks: Sequence[int] | None = None, weights: str = "uniform") -> None:
        self.ks = None if ks is None else [int(k) for k in ks]
        self.weights = check_weights(weights)
        self.k_: int | None = None
        self.ks_: list[int] | None = None
        self.val_r2_per_k_: np.ndarray | None = None   # (K, T)
        self.x_mean_: np.ndarray | None = None
        self.x_scale_: np.ndarray | None = None
        self.train_z_: torch.Tensor | None = None      # (n, D) float32, standardised
        self.train_sq_: torch.Tensor | None = None     # (n,) float64 squared norms
        self.train_y_: torch.Tensor | None = None      # (n, T) float64
        self.train_source_: Any = None                 # streamed: the cache's lazy train rows (FeatureMatrix)
        self.block_rows_: int | None = None            # streamed: train rows read and searched at once
        self._z64: torch.Tensor | None = None
        self._y_1d = True

    @property
    def rows(self) -> dict[str, Any]:
        """How the search reads the train rows (metrics.json's train_rows)."""
        if self.train_source_ is None:
            return {"sampler": "in-memory"}
        return {"sampler": "streamed-search", "block_rows": self.block_rows_,
                "max_memory_bytes": 3 * self.block_rows_ * self.train_source_.shape[1] * IN_MEMORY_BYTES_PER_VALUE}

    # -- fitting ------------------------------------------------------------------------------------
    def grid(self, n_train: int) -> list[int]:
        ks = sorted(set(DEFAULT_KS if self.ks is None else self.ks))
        if not ks or ks[0] < 1:
            raise FeatcacheError(f"knn: k must be positive, got {ks}")
        kept = [k for k in ks if k <= n_train]
        if not kept:
            raise FeatcacheError(f"knn: every k of {ks} exceeds the {n_train} train rows")
        return kept

    def fit(self, X_train: Any, y_train: Any, X_val: Any = None, y_val: Any = None,
            target_names: Sequence[str] | None = None, max_memory: int | str | None = None,
            stream: bool | None = None) -> KNNHead:
        """Standardise on train, keep the train rows (or, for a cache's rows over max_memory, a reference to
        them: stream=True streams whatever the size), and choose k by validation R2."""
        y = np.asarray(y_train, dtype=np.float64)
        self._y_1d = y.ndim == 1
        y = y[:, None] if y.ndim == 1 else y
        streamable = hasattr(X_train, "load") and hasattr(X_train, "fingerprint")  # the cache's FeatureMatrix
        if stream and not streamable:
            raise FeatcacheError("knn: stream=True needs the cache's lazy train rows (a FeatureMatrix)")
        budget = parse_memory(max_memory)
        streamed = streamable and stream is not False and (
            bool(stream) or X_train.shape[0] * X_train.shape[1] * IN_MEMORY_BYTES_PER_VALUE > budget)
        X = None if streamed else np.asarray(X_train.load() if hasattr(X_train, "load") else X_train)
        shape = X_train.shape if streamed else X.shape
        if len(shape) != 2 or shape[0] != len(y) or shape[0] == 0:
            raise FeatcacheError(f"knn: features and targets do not match: shapes {tuple(shape)} and {y.shape}")
        for j in np.flatnonzero(~np.isfinite(y).all(axis=0)):
            raise FeatcacheError(f"target '{target_name(target_names, j)}' has NaN or inf values on the train "
                                 "split; drop or fill those rows")
        if streamed:
            self.train_source_ = X_train
            # a third of the budget for a block of train rows, a third for a block of query rows, a third for
            # the distances between them
            self.block_rows_ = max(64, budget // (3 * shape[1] * IN_MEMORY_BYTES_PER_VALUE))
        # one pass of moments (streamed in blocks of that size), which also refuses NaN/inf rows in the one
        # wording of standardise.nonfinite_rows_error
        mean, std = column_moments(X_train if streamed else X, split="train",
                                   **({"chunk": self.block_rows_} if streamed else {}))
        self.x_mean_, self.x_scale_ = mean, np.where(is_constant(std, mean), 1.0, std)
        if not streamed:
            self.train_z_ = torch.from_numpy(self.standardise(X))
            self.train_sq_ = (self.train_z_.double() ** 2).sum(dim=1)
        self.train_y_ = torch.from_numpy(y)
        ks = self.grid(shape[0])
        if X_val is None:
            if len(ks) > 1:
                raise FeatcacheError("choosing k needs a validation split (k is never chosen on test); give "
                                     "validation rows or a single --knn-k")
            self.k_, self.ks_, self.val_r2_per_k_ = ks[0], ks, None
            return self
        from .metrics import r2

        Xv = X_val if streamed and hasattr(X_val, "load") else np.asarray(
            X_val.load() if hasattr(X_val, "load") else X_val)  # streamed: validation rows read in blocks too
        yv = np.asarray(y_val, dtype=np.float64).reshape(len(Xv), -1)
        if len(Xv.shape) != 2 or Xv.shape[1] != shape[1]:
            raise FeatcacheError(f"knn: validation features have shape {tuple(Xv.shape)}; train has {shape[1]} "
                                 "columns")
        preds = np.concatenate([self._predict_ks(np.asarray(Xv[a:a + self._query_rows()], dtype=np.float32), ks)
                                for a in range(0, len(Xv), self._query_rows())], axis=1)  # (K, m, T)
        curve = np.stack([np.atleast_1d(r2(yv, p)) for p in preds])       # (K, T)
        best = int(np.argmax(np.nan_to_num(curve.mean(axis=1), nan=-np.inf)))  # smallest k on ties
        self.k_, self.ks_, self.val_r2_per_k_ = ks[best], ks, curve
        return self

    # -- search -------------------------------------------------------------------------------------
    def standardise(self, X: np.ndarray) -> np.ndarray:
        """(X - train mean) / train scale as float32 (the arrays the distances are computed on)."""
        return ((np.asarray(X, dtype=np.float64) - self.x_mean_) / self.x_scale_).astype(np.float32)

    def neighbours(self, Z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances and train indices of each query row's k nearest train rows, nearest first.

        A block of query rows against every train row at once (one matrix product into a preallocated
        block of distances, then one top-k), so no partial top-k lists are merged: measured 2x faster than
        train-blocked search with merges at 100k x 384. Streamed heads search block by block instead."""
        if self.train_source_ is not None:
            return self._neighbours_streamed(Z, k)
        train = self._train64()
        n, m = train.shape[0], Z.shape[0]
        take = min(k, n)
        step = max(1, min(m, BLOCK_ELEMENTS // max(n, 1)))
        out_d = torch.empty((m, take), dtype=torch.float64)
        out_i = torch.empty((m, take), dtype=torch.int64)
        for q0 in range(0, m, step):
            q = Z[q0:q0 + step].double()
            d2 = ((q * q).sum(dim=1, keepdim=True) + self.train_sq_[None, :]).addmm_(q, train.T, alpha=-2.0)
            d, i = torch.topk(d2, take, dim=1, largest=False, sorted=False)
            order = torch.argsort(d, dim=1, stable=True)
            out_d[q0:q0 + step] = torch.gather(d, 1, order).clamp_(min=0.0)
            out_i[q0:q0 + step] = torch.gather(i, 1, order)
        return out_d, out_i

    def _neighbours_streamed(self, Z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """neighbours() over train rows read from the cache block by block: each block's distances (the same
        formula, so the same numbers) and top-k, merged into a running top-k per query row."""
        source, step = self.train_source_, int(self.block_rows_)
        n, m = len(source), Z.shape[0]
        take = min(k, n)
        best_d = torch.full((m, take), math.inf, dtype=torch.float64)
        best_i = torch.full((m, take), -1, dtype=torch.int64)
        # the distances of `width` queries to a block (float64, with top-k's copies: 24 bytes each) take what the
        # block's rows take: the last third of the budget the blocks were cut to
        q_step = max(1, min(m, BLOCK_ELEMENTS // step, source.shape[1]))
        for t0 in range(0, n, step):
            train = torch.from_numpy(self.standardise(source[t0:t0 + step])).double()
            train_sq = (train ** 2).sum(dim=1)
            for q0 in range(0, m, q_step):
                q = Z[q0:q0 + q_step].double()
                d2 = ((q * q).sum(dim=1, keepdim=True) + train_sq[None, :]).addmm_(q, train.T, alpha=-2.0)
                d, i = torch.topk(d2, min(take, train.shape[0]), dim=1, largest=False, sorted=False)
                cand_d = torch.cat([best_d[q0:q0 + q_step], d], dim=1)
                cand_i = torch.cat([best_i[q0:q0 + q_step], i + t0], dim=1)
                d, pick = torch.topk(cand_d, take, dim=1, largest=False, sorted=False)
                best_d[q0:q0 + q_step], best_i[q0:q0 + q_step] = d, torch.gather(cand_i, 1, pick)
        order = torch.argsort(best_d, dim=1, stable=True)
        return torch.gather(best_d, 1, order).clamp_(min=0.0), torch.gather(best_i, 1, order)

    def _train64(self) -> torch.Tensor:
        """The standardised train rows in float64 (kept after the first search; head.pt stores float32)."""
        if self._z64 is None:
            self._z64 = self.train_z_.double()
        return self._z64

    def _predict_ks(self, X: np.ndarray, ks: list[int]) -> np.ndarray:
        """Predictions for every k of ks at once, shape (K, m, T): prefixes of one sorted neighbour list."""
        if len(X) == 0:
            return np.zeros((len(ks), 0, self.train_y_.shape[1]))
        d2, idx = self.neighbours(torch.from_numpy(self.standardise(X)), max(ks))
        y = self.train_y_[idx]                                             # (m, kmax, T)
        if self.weights == "uniform":
            sums = torch.cumsum(y, dim=1)
            out = [sums[:, k - 1] / k for k in ks]
        else:
            dist = d2.sqrt()
            zero = (dist == 0).double()
            w = torch.where(dist > 0, 1.0 / dist.clamp(min=1e-300), torch.zeros_like(dist))
            wy, ws = torch.cumsum(w[..., None] * y, dim=1), torch.cumsum(w, dim=1)
            zy, zs = torch.cumsum(zero[..., None] * y, dim=1), torch.cumsum(zero, dim=1)
            out = []
            for k in ks:
                exact = zs[:, k - 1, None] > 0                             # a train row at distance 0
                out.append(torch.where(exact, zy[:, k - 1] / zs[:, k - 1, None].clamp(min=1),
                                       wy[:, k - 1] / ws[:, k - 1, None].clamp(min=1e-300)))
        return torch.stack(out).numpy()

    def _check_fitted(self) -> None:
        if self.k_ is None:
            raise FeatcacheError("the knn head is not fitted yet")

    def _query_rows(self, chunk_rows: int = 16_384) -> int:
        """Query rows searched at once: a streamed head's share of its budget (a train block's size)."""
        return chunk_rows if self.block_rows_ is None else int(self.block_rows_)

    def predict(self, X: Any, chunk_rows: int = 16_384) -> np.ndarray:
        """Predictions in the target's units (float64), query rows streamed in chunks."""
        self._check_fitted()
        n = len(X)
        chunk_rows = self._query_rows(chunk_rows)
        out = np.empty((n, self.train_y_.shape[1]), dtype=np.float64)
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            out[start:stop] = self._predict_ks(np.asarray(X[start:stop], dtype=np.float32), [self.k_])[0]
        return out[:, 0] if self._y_1d else out

    # -- saving -------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers (torch.load(weights_only=True)); includes the standardised train rows."""
        self._check_fitted()
        source = self.train_source_
        return {"kind": "knn", "k": self.k_, "ks": list(self.ks_ or []), "requested_ks": self.ks,
                "weights": self.weights, "val_r2_per_k": None if self.val_r2_per_k_ is None
                else torch.as_tensor(self.val_r2_per_k_), "x_mean": torch.as_tensor(self.x_mean_),
                "x_scale": torch.as_tensor(self.x_scale_),
                "train_z": None if source is not None else self.train_z_.clone(),
                "train_source": None if source is None else {
                    "cache": os.path.realpath(source.path), "fingerprint": source.fingerprint, "split": source.split,
                    "features": [list(f) for f in source.features], "draw": source.draw,
                    "rows": None if source.rows is None else torch.as_tensor(source.rows),
                    "block_rows": int(self.block_rows_)},
                "train_y": self.train_y_.clone(), "y_1d": self._y_1d}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KNNHead:
        if state.get("kind") != "knn":
            raise FeatcacheError(f"not a knn head state (kind {state.get('kind')!r})")
        head = cls(ks=state.get("requested_ks"), weights=str(state["weights"]))
        head.k_, head.ks_ = int(state["k"]), [int(k) for k in state["ks"]]
        head.val_r2_per_k_ = None if state["val_r2_per_k"] is None else state["val_r2_per_k"].double().numpy()
        head.x_mean_ = state["x_mean"].double().numpy()
        head.x_scale_ = state["x_scale"].double().numpy()
        if state.get("train_source") is not None:
            head.train_source_, head.block_rows_ = _reopen(state["train_source"])
        else:
            head.train_z_ = state["train_z"].float()
            head.train_sq_ = (head.train_z_.double() ** 2).sum(dim=1)
        head.train_y_ = state["train_y"].double()
        head._y_1d = bool(state["y_1d"])
        return head


def _reopen(source: dict[str, Any]) -> tuple[Any, int]:
    """A streamed head's train rows, from the cache it was fitted on (which must be unchanged)."""
    from ..cache.reader import FeatureMatrix, open_cache

    path = source["cache"]
    try:
        cache = open_cache(path)
    except FeatcacheError:
        raise FeatcacheError(f"this knn head searches the train rows of the cache {path}, which is not there "
                             "(it was fitted with its rows left in the cache: run predict where that cache is)"
                             ) from None
    if cache.fingerprint != source["fingerprint"]:
        raise FeatcacheError(f"{path}: fingerprint {cache.fingerprint[:12]} is not the {source['fingerprint'][:12]} "
                             "this knn head was fitted on (its train rows are searched there); refit the head")
    rows = None if source["rows"] is None else np.asarray(source["rows"], dtype=np.int64)
    matrix = FeatureMatrix(cache, source["split"], [tuple(f) for f in source["features"]], source["draw"], rows)
    return matrix, int(source["block_rows"])


class KNNEntry(HeadEntry):
    """`knn`: exact neighbours on standardised features, k chosen by validation R2 (a search, no training)."""

    name = "knn"
    description = "k nearest neighbours on standardised features (Euclidean), k chosen by validation R2"
    options = (
        HeadOption("knn_ks", "--knn-k", None, "knn: the k values validation R2 chooses from (default 1,2,4,...,256).",
                   parse=parse_ks, metavar="K1,K2,...", show_default=False, dest="knn_k"),
        HeadOption("knn_weights", "--knn-weights", "uniform",
                   "knn: uniform (mean of the k targets) or distance (weights 1/d).",
                   constraint=StrOptions(WEIGHTS), click_type=WEIGHTS),
    )

    def build(self, in_dim: int, out_dim: int, hidden: int, dropout: float, **kwargs: Any) -> KNNHead:
        return KNNHead(**kwargs)

    def resolve_options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        options = dict(given or {})
        if options.get("knn_weights") is not None:
            check_weights(options["knn_weights"])  # the wording knn has always used
        if options.get("knn_ks") is not None:
            options["knn_ks"] = [int(k) for k in options["knn_ks"]] or None
        return super().resolve_options(options)

    def describe_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"knn": {"ks": options["knn_ks"], "weights": options["knn_weights"]}}

    def fit(self, rows: FitRows) -> tuple[KNNHead, list[dict[str, Any]]]:
        knn = self.build(rows.in_dim, len(rows.targets), 0, 0.0, ks=rows.options["knn_ks"],
                         weights=rows.options["knn_weights"])
        knn.fit(rows.x["train"], rows.y["train"], rows.x.get("val"), rows.y.get("val"), target_names=rows.targets,
                max_memory=rows.spec.max_memory)
        curve = knn.val_r2_per_k_
        history = [] if curve is None else [
            {"k": k, **{f"val_r2_{t}": float(curve[i, j]) for j, t in enumerate(rows.targets)}}
            for i, k in enumerate(knn.ks_)]
        return knn, history

    def chosen(self, predictor: KNNHead) -> dict[str, Any]:
        return {"k": predictor.k_}

    def from_state(self, saved: dict[str, Any]) -> KNNHead:
        return KNNHead.from_state(saved["state"])  # holds the standardised train rows, or reopens their cache

    def estimated_flop(self, n_train: int, n_eval: int, width: int, spec: Any, batched: bool = False) -> float:
        return 2.0 * n_train * (n_train + n_eval) * width  # distances of every scored row to every train row


register(KNNEntry())
