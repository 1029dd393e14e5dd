"""Class-specificity metrics: the filter-class MI matrix and MIS (paper Sec. 4.1)."""
from __future__ import annotations

import numpy as np
from sklearn.feature_selection import mutual_info_classif


def mi_matrix(
    features: np.ndarray, labels: np.ndarray, num_classes: int, n_neighbors: int = 3, random_state: int = 0
) -> np.ndarray:
    """M[k, c] = MI(a_k ; 1{y=c}), scikit-learn's estimator (Ross 2014), one call per class."""
    matrix = np.zeros((features.shape[1], num_classes))
    for c in range(num_classes):
        is_c = labels == c
        if is_c.all() or not is_c.any():
            continue  # a constant target carries no information
        matrix[:, c] = mutual_info_classif(
            features, is_c, n_neighbors=n_neighbors, random_state=random_state
        )
    return matrix


def mis(matrix: np.ndarray) -> float:
    """Mean over filters of each filter's largest MI with any one class."""
    return float(matrix.max(axis=1).mean())
