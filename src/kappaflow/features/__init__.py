"""Fixed-length material descriptors (composition features)."""

from kappaflow.features.composition import (
    EXTRAS,
    magpie_feature_names,
    magpie_features,
    n_magpie_features,
)

__all__ = ["EXTRAS", "magpie_feature_names", "magpie_features", "n_magpie_features"]
