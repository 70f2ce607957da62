"""scikit-learn estimators on cached features: `from featcache.sklearn import MLPProbe, RidgeProbe`.

They live in featcache.heads.probes (wrapping RidgeHead and train_head); this module is their public name.
"""

from __future__ import annotations

from .heads.probes import MLPProbe, ProbeError, RidgeProbe

__all__ = ["MLPProbe", "ProbeError", "RidgeProbe"]
