"""The filter-class mutual-information matrix M[k, c] = MI(a_k ; 1{y=c}) and MIS (Sec. 4.1).

`method="sklearn"` is the reference: one `mutual_info_classif` call per class. `method="fast"`
is the same estimator (Ross 2014, as scikit-learn 1.x implements it) specialised to one
continuous variable against a binary target, exact to the floating-point predicate:

- the features are scaled and jittered exactly as scikit-learn does, once (an integer
  `random_state` gives every per-class reference call the same noisy features);
- each feature is sorted once; within a label group the k-th neighbour distance is the k-th
  smallest of the k gaps on either side in sorted order, each gap |fl(x_i - x_j)|, which is
  the distance scikit-learn's KD-tree computes in one dimension;
- the radius is nextafter(r_k, 0) and m_i counts samples with |fl(x_j - x_i)| <= radius,
  found by galloping search on the sorted values (monotone in j), never by x_i +- r, whose
  rounding moves the boundary;
- groups small enough that scikit-learn's neighbour search goes brute force (k >= n // 2)
  get their radii from that same search, since its distances are computed differently.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from scipy.special import digamma
from sklearn.feature_selection import mutual_info_classif
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import scale
from sklearn.utils import check_random_state

METHODS = ("fast", "sklearn")


def mi_matrix(features, labels, n_classes=None, n_neighbors=3, random_state=0, method="fast") -> np.ndarray:
    """(K, C) matrix of MI between each filter's activation (N, K) and each class indicator."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, K) and labels (N,); got {features.shape} and {labels.shape}")
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    if method == "sklearn":
        return np.stack(
            [mutual_info_classif(features, labels == c, n_neighbors=n_neighbors, random_state=random_state)
             for c in range(n_classes)],
            axis=1,
        )
    if method != "fast":
        raise ValueError(f"method must be one of {METHODS} (got {method!r})")
    return mi_block(jittered(features, random_state), labels, range(n_classes), n_neighbors)


def mis(matrix: np.ndarray) -> float:
    """Mean over filters of each filter's largest MI with any one class."""
    return float(matrix.max(axis=1).mean())


def jittered(features: np.ndarray, random_state=0) -> np.ndarray:
    """scikit-learn's preprocessing of continuous features: float64, divided by the std, plus
    1e-10 * max(1, mean |x|) * standard normal noise drawn as one (N, K) matrix.

    Written with the same column-mask indexing as scikit-learn: the copies it makes fix the
    memory layout, hence the summation order of the means, hence the last bits of the noise,
    which decide the order of the many near-equal jittered zeros of ReLU features.
    """
    x = np.array(features, dtype=np.float64)
    columns = np.ones(x.shape[1], dtype=bool)
    x[:, columns] = scale(x[:, columns], with_mean=False, copy=False)
    means = np.maximum(1, np.mean(np.abs(x[:, columns]), axis=0))
    x[:, columns] += 1e-10 * means * check_random_state(random_state).standard_normal(size=x.shape)
    return x


def mi_block(noisy: np.ndarray, labels: np.ndarray, classes, n_neighbors: int = 3) -> np.ndarray:
    """MI of every column of already-jittered features against each listed class: (K, len(classes))."""
    classes = np.asarray(list(classes), dtype=np.int64)
    n = len(labels)
    psi = digamma(np.arange(n + 1, dtype=np.float64))  # psi[0] = -inf is never used
    counts = np.bincount(labels, minlength=int(max(classes.max(initial=0), labels.max(initial=0)) + 1))
    regular = np.array([_regular(counts[c], n, n_neighbors) for c in classes])
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = np.empty((noisy.shape[1], len(classes)))
    computed_here = np.full(n, np.nan)  # no override: every radius from the sorted gaps
    for k in range(noisy.shape[1]):
        order = np.argsort(noisy[:, k])  # ties have equal values, so their order cannot matter
        xs = noisy[order, k]
        ls = labels[order]
        out[k] = _mi_feature(xs, ls, starts, classes, regular, n_neighbors, psi)
        for j in np.flatnonzero(~regular):
            c = classes[j]
            is_pos = ls == c
            override = _brute_radii(xs, is_pos, counts[c], n, n_neighbors)
            out[k, j] = _mi_binary(xs, is_pos, n_neighbors, computed_here if override is None else override, psi)
    return out


def _regular(n_pos: int, n: int, n_neighbors: int) -> bool:
    """Classes the per-feature kernel handles: both groups searched by KD-tree in scikit-learn
    (k < count // 2) with the negatives' k equal to the all-sample k; the rest (tiny classes,
    tiny data) take the general path."""
    n_neg = n - n_pos
    k_neg = min(n_neighbors, n_neg - 1)
    if n_neg < 2 or k_neg != min(n_neighbors, n - 1) or k_neg >= n_neg // 2:
        return False
    return n_pos <= 1 or min(n_neighbors, n_pos - 1) < n_pos // 2


@njit(cache=True)
def _mi_feature(xs, ls, starts, classes, regular, n_neighbors, psi):
    """All regular classes of one sorted feature at once.

    Every sample is a negative for all classes but its own, and a negative whose 2k sorted
    neighbours hold no positive has the same k-th neighbour and the same count m as in the
    whole sample. So r_k and m are computed once over all samples, and for each class only its
    positives and the negatives with a positive among their k nearest are recomputed.
    """
    n = len(xs)
    by_label = np.empty(n, dtype=np.int64)  # sorted positions grouped by label (counting sort)
    filled = starts[:-1].copy()
    for i in range(n):
        by_label[filled[ls[i]]] = i
        filled[ls[i]] += 1
    k = min(n_neighbors, n - 1)
    r_all = np.empty(n)
    m_all = np.empty(n, dtype=np.int64)
    total = 0.0
    for i in range(n):
        r_all[i] = _kth_gap(xs, i, k)
        right, left = _count_within(xs, i, r_all[i])
        m_all[i] = right - left + 1
        total += psi[m_all[i]]
    stamp = np.zeros(n, dtype=np.int64)  # stamp[i] == j + 1: sample i already handled for class j
    out = np.full(len(classes), np.nan)
    for j in range(len(classes)):
        if not regular[j]:
            continue
        c = classes[j]
        positives = by_label[starts[c]:starts[c + 1]]
        n_pos = len(positives)
        n_neg = n - n_pos
        lone = positives[0] if n_pos == 1 else -1  # dropped from every count, as in scikit-learn
        sum_m = total
        for t in range(n_pos):
            p = positives[t]
            stamp[p] = j + 1
            sum_m -= psi[m_all[p]]
            if n_pos > 1:
                r, before, after = _kth_gap_indexed(xs, positives, t, min(n_neighbors, n_pos - 1))
                # the run ends short of the first positive not taken on each side
                lo = positives[before] if before >= 0 else -1
                hi = positives[after] if after < n_pos else n
                sum_m += psi[_count_between(xs, p, r, lo, hi)]
        for p in positives:
            for q in range(max(p - k, 0), min(p + k + 1, n)):
                # Only a positive inside q's k-nearest radius can change q's k-th neighbour.
                gap = xs[p] - xs[q] if q < p else xs[q] - xs[p]
                if stamp[q] == j + 1 or gap > r_all[q]:
                    continue
                stamp[q] = j + 1
                r = _kth_gap_skipping(xs, ls, q, k, c)
                right, left = _count_within(xs, q, r)
                m = right - left + 1 - (1 if left <= lone <= right and lone >= 0 else 0)
                sum_m += psi[m] - psi[m_all[q]]
        if n_pos > 1:
            n_kept = n
            sum_k = n_neg * psi[k] + n_pos * psi[min(n_neighbors, n_pos - 1)]
            sum_count = n_neg * psi[n_neg] + n_pos * psi[n_pos]
        else:
            n_kept = n_neg
            sum_k = n_neg * psi[k]
            sum_count = n_neg * psi[n_neg]
        out[j] = max(0.0, psi[n_kept] + (sum_k - sum_count - sum_m) / n_kept)
    return out


@njit(cache=True)
def _count_between(xs, i, radius, lo, hi):
    """Like _count_within, when the run is known to lie strictly between positions lo and hi:
    bisection on each side."""
    limit = max(radius, _TINIEST)
    x = xs[i]
    a, b = i, hi  # xs[a] inside, xs[b] outside (or b == len)
    while b - a > 1:
        mid = (a + b) // 2
        if xs[mid] - x < limit:
            a = mid
        else:
            b = mid
    right = a
    a, b = lo, i  # xs[a] outside (or a == -1), xs[b] inside
    while b - a > 1:
        mid = (a + b) // 2
        if x - xs[mid] < limit:
            b = mid
        else:
            a = mid
    return right - b + 1


@njit(cache=True)
def _kth_gap_indexed(xs, members, t, k):
    """_kth_gap over the values xs[members], without gathering them; also the indices of the
    nearest members left and right that were not taken."""
    left, right, taken, gap = t - 1, t + 1, 0, 0.0
    n = len(members)
    x = xs[members[t]]
    while taken < k:
        dl = x - xs[members[left]] if left >= 0 else np.inf
        dr = xs[members[right]] - x if right < n else np.inf
        if dl <= dr:
            gap, left = dl, left - 1
        else:
            gap, right = dr, right + 1
        taken += 1
    return gap, left, right


@njit(cache=True)
def _kth_gap_skipping(xs, ls, i, k, c):
    """k-th gap from sorted position i among samples whose label is not c."""
    n = len(xs)
    left, right, taken, gap = i - 1, i + 1, 0, 0.0
    while taken < k:
        while left >= 0 and ls[left] == c:
            left -= 1
        while right < n and ls[right] == c:
            right += 1
        dl = xs[i] - xs[left] if left >= 0 else np.inf
        dr = xs[right] - xs[i] if right < n else np.inf
        if dl <= dr:
            gap, left = dl, left - 1
        else:
            gap, right = dr, right + 1
        taken += 1
    return gap


def _brute_radii(xs, is_pos, n_pos, n, n_neighbors):
    """k-th neighbour distances for groups scikit-learn searches by brute force (NaN elsewhere)."""
    override = None
    for group, count in ((is_pos, n_pos), (~is_pos, n - n_pos)):
        k = min(n_neighbors, count - 1)
        if count > 1 and k >= count // 2:
            if override is None:
                override = np.full(len(xs), np.nan)
            values = xs[group].reshape(-1, 1)
            distances = NearestNeighbors(n_neighbors=k).fit(values).kneighbors()[0]
            override[group] = distances[:, -1]
    return override


@njit(cache=True)
def _kth_gap(values, i, k):
    """k-th smallest |fl(v_i - v_j)| over j != i, merging the gaps to the left and right."""
    left, right, taken, gap = i - 1, i + 1, 0, 0.0
    n = len(values)
    while taken < k:
        dl = values[i] - values[left] if left >= 0 else np.inf
        dr = values[right] - values[i] if right < n else np.inf
        if dl <= dr:
            gap, left = dl, left - 1
        else:
            gap, right = dr, right + 1
        taken += 1
    return gap


_TINIEST = 5e-324  # the smallest positive double: gap < _TINIEST means gap == 0
_SCAN = 32  # neighbours checked one by one before galloping (a positive's run is often ~30 long)


@njit(cache=True)
def _count_within(xs, i, radius):
    """(right, left): the run of j with |fl(xs_j - xs_i)| inside radius r_k around sorted position i.

    The gap is monotone in j on each side, so the run is contiguous. A short linear scan
    finds the usual neighbours; galloping then bisection bounds the long runs (exact ties,
    dense clusters) at O(log m).
    """
    n = len(xs)
    x = xs[i]
    # scikit-learn keeps gap <= nextafter(r_k, 0): strictly closer than the k-th neighbour,
    # or an exact tie when r_k is 0. For gaps >= 0 that is one test: gap < max(r_k, tiniest).
    limit = max(radius, _TINIEST)
    right = i
    while right + 1 < n and right - i < _SCAN and xs[right + 1] - x < limit:
        right += 1
    if right - i == _SCAN:
        step = 1
        while right + step < n and xs[right + step] - x < limit:
            right += step
            step *= 2
        hi = min(right + step, n)  # xs[hi] fails, or hi == n
        while hi - right > 1:
            mid = (right + hi) // 2
            if xs[mid] - x < limit:
                right = mid
            else:
                hi = mid
    left = i
    while left - 1 >= 0 and i - left < _SCAN and x - xs[left - 1] < limit:
        left -= 1
    if i - left == _SCAN:
        step = 1
        while left - step >= 0 and x - xs[left - step] < limit:
            left -= step
            step *= 2
        lo = max(left - step, -1)  # xs[lo] fails, or lo == -1
        while left - lo > 1:
            mid = (lo + left) // 2
            if x - xs[mid] < limit:
                left = mid
            else:
                lo = mid
    return right, left


@njit(cache=True)
def _mi_binary(xs, is_pos, n_neighbors, override, psi):
    n = len(xs)
    n_pos = 0
    for i in range(n):
        n_pos += is_pos[i]
    counts = (n - n_pos, n_pos)  # group 0: negatives, group 1: positives
    positions = (np.nonzero(~is_pos)[0], np.nonzero(is_pos)[0])
    radius = np.empty(n)
    n_kept = 0
    sum_psi_k = 0.0
    sum_psi_count = 0.0
    dropped = -1  # the lone member of a one-sample group, left out of every count
    for g in range(2):
        count = counts[g]
        if count == 1:
            dropped = positions[g][0]
            continue
        if count == 0:
            continue
        k = min(n_neighbors, count - 1)
        values = xs[positions[g]]
        for t in range(count):
            i = positions[g][t]
            radius[i] = override[i] if not np.isnan(override[i]) else _kth_gap(values, t, k)
        n_kept += count
        sum_psi_k += count * psi[k]
        sum_psi_count += count * psi[count]
    if n_kept == 0:
        return 0.0
    sum_psi_m = 0.0
    for i in range(n):
        if i == dropped:
            continue
        right, left = _count_within(xs, i, radius[i])
        m = right - left + 1
        if left <= dropped <= right:
            m -= 1
        sum_psi_m += psi[m]
    mi = psi[n_kept] + (sum_psi_k - sum_psi_count - sum_psi_m) / n_kept
    return max(0.0, mi)
