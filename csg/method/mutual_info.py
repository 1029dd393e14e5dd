"""The filter-class mutual-information matrix M[k, c] = MI(a_k ; 1{y=c}) and MIS (Sec. 4.1).

`method="sklearn"` is the reference: one `mutual_info_classif` call per class. `method="fast"`
is the same estimator (Ross 2014, as scikit-learn 1.x implements it) specialised to one
continuous variable against a binary target, exact to the floating-point predicate:

- the features are scaled and jittered exactly as scikit-learn does, once (an integer
  `random_state` gives every per-class reference call the same noisy features);
- each feature is sorted once (radix sort, labels carried along); within a label group the
  k-th neighbour distance is the k-th gap met when merging outward from a sample in sorted
  order, each gap |fl(x_i - x_j)|, which is the distance scikit-learn's KD-tree computes in
  one dimension;
- the radius is nextafter(r_k, 0) and m_i counts samples with |fl(x_j - x_i)| <= radius: read
  off the merge order (every closer sample is merged first) or searched on the sorted values
  from the neighbours already found, never located by x_i +- r, whose rounding moves the boundary;
- one pass per feature serves every class: a sample's terms as a negative differ from its
  terms in the whole sample only for classes among its k nearest;
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
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinity")
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
    noise = check_random_state(random_state).standard_normal(size=x.shape)
    noise *= 1e-10 * means  # the same products, without scikit-learn's temporaries
    x += noise
    return x


def mi_block(noisy: np.ndarray, labels: np.ndarray, classes, n_neighbors: int = 3) -> np.ndarray:
    """MI of every column of already-jittered features against each listed class: (K, len(classes))."""
    classes = np.asarray(list(classes), dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    psi = digamma(np.arange(n + 1, dtype=np.float64))  # psi[0] = -inf is never used
    counts = np.bincount(labels, minlength=int(max(classes.max(initial=0), labels.max(initial=0)) + 1))
    regular = np.array([_regular(counts[c], n, n_neighbors) for c in classes], dtype=bool)
    column_of = np.full(len(counts), -1, dtype=np.int64)
    column_of[classes[regular]] = np.flatnonzero(regular)
    starts = np.concatenate([[0], np.cumsum(counts)])
    columns = np.ascontiguousarray(noisy.T)
    out = np.empty((len(columns), len(classes)))
    computed_here = np.full(n, np.nan)  # no override: every radius from the sorted gaps
    for k, values in enumerate(columns):
        xs, ls = _sorted_pairs(values, labels)  # ties have equal values, so their order cannot matter
        out[k] = _mi_feature(xs, ls, starts, classes, column_of, n_neighbors, psi) if regular.any() else np.nan
        for j in np.flatnonzero(~regular):
            c = classes[j]
            is_pos = ls == c
            override = _brute_radii(xs, is_pos, counts[c], n, n_neighbors)
            out[k, j] = _mi_binary(xs, is_pos, n_neighbors, computed_here if override is None else override, psi)
    return out


def _regular(n_pos: int, n: int, n_neighbors: int) -> bool:
    """Classes the per-feature kernel handles: absent ones, and those with both groups searched
    by KD-tree in scikit-learn (k < count // 2) and the negatives' k equal to the all-sample k.
    The rest (one-sample classes, tiny classes, tiny data) take the general path."""
    n_neg = n - n_pos
    k_neg = min(n_neighbors, n_neg - 1)
    if n_neg < 2 or k_neg != min(n_neighbors, n - 1) or k_neg >= n_neg // 2:
        return False
    return n_pos == 0 or (n_pos >= 2 and min(n_neighbors, n_pos - 1) < n_pos // 2)


@njit(cache=True)
def _sorted_pairs(values, labels):
    """Values sorted ascending with their labels: an LSD radix sort on the order-preserving
    integer image of the doubles, a byte per pass, passes where every key shares the byte skipped."""
    n = len(values)
    top = np.uint64(1) << np.uint64(63)
    keys = values.view(np.uint64).copy()
    for i in range(n):
        keys[i] = ~keys[i] if keys[i] & top else keys[i] | top  # negatives reversed, below positives
    histograms = np.zeros((8, 256), dtype=np.int64)
    for i in range(n):
        for d in range(8):
            histograms[d, (keys[i] >> np.uint64(8 * d)) & np.uint64(255)] += 1
    ls = labels.copy()
    keys_out = np.empty_like(keys)
    ls_out = np.empty_like(ls)
    offsets = np.empty(256, dtype=np.int64)
    for d in range(8):
        shift = np.uint64(8 * d)
        if n == 0 or histograms[d, (keys[0] >> shift) & np.uint64(255)] == n:
            continue
        offsets[0] = 0
        offsets[1:] = np.cumsum(histograms[d, :-1])
        for i in range(n):
            byte = (keys[i] >> shift) & np.uint64(255)
            keys_out[offsets[byte]] = keys[i]
            ls_out[offsets[byte]] = ls[i]
            offsets[byte] += 1
        keys, keys_out = keys_out, keys
        ls, ls_out = ls_out, ls
    for i in range(n):
        keys[i] = keys[i] & ~top if keys[i] & top else ~keys[i]
    return keys.view(np.float64), ls


@njit(cache=True)
def _mi_feature(xs, ls, starts, classes, column_of, n_neighbors, psi):
    """All regular classes of one sorted feature, in one pass over the samples.

    Sample i is a positive of its own class and a negative of every other. As a negative its
    k-th neighbour and count m are those of the whole sample unless a member of that class is
    among its k nearest; so psi(m) is summed once over all samples, and each class gets the
    change from its positives and from the negatives that have one of them among their k nearest.
    """
    n = len(xs)
    by_label = np.empty(n, dtype=np.int64)  # sorted positions grouped by label (counting sort)
    grouped = np.empty(n)  # their values: each label's values, contiguous and sorted
    filled = starts[:-1].copy()
    for i in range(n):
        slot = filled[ls[i]]
        by_label[slot], grouped[slot] = i, xs[i]
        filled[ls[i]] += 1
    k = min(n_neighbors, n - 1)
    near = np.empty(min(2 * k, n - 1), dtype=np.int64)  # i's nearest samples, nearest first
    near_gaps = np.empty(len(near))
    psi_all = np.empty(n)
    change = np.zeros(len(classes))
    for i in range(n):
        _nearest(xs, i, len(near), taken=near, taken_gaps=near_gaps)
        psi_all[i] = psi[_count_near(xs, ls, i, near, near_gaps, k, -1)]
        own = ls[i]
        for t in range(k):  # as a negative of each other class among its k nearest, once
            c = ls[near[t]]
            if c == own or column_of[c] < 0 or _label_among(ls, near, t, c):
                continue
            change[column_of[c]] += psi[_count_near(xs, ls, i, near, near_gaps, k, c)] - psi_all[i]
    for c in range(len(column_of)):  # as a positive of its own class, among its members
        j = column_of[c]
        first, end = starts[c], starts[c + 1]
        if j < 0 or end - first < 2:
            continue
        members = grouped[first:end]
        for t in range(end - first):
            r, kth, other = _nearest(members, t, min(n_neighbors, end - first - 1))
            i = by_label[first + t]
            change[j] += psi[_count(xs, i, r, by_label[first + kth], by_label[first + other])] - psi_all[i]
    total = psi_all.sum()
    out = np.full(len(classes), np.nan)
    for j in range(len(classes)):
        c = classes[j]
        if column_of[c] != j:
            continue
        n_pos = starts[c + 1] - starts[c]
        n_neg = n - n_pos
        sum_k = n_neg * psi[k] + (n_pos * psi[min(n_neighbors, n_pos - 1)] if n_pos else 0.0)
        sum_count = n_neg * psi[n_neg] + (n_pos * psi[n_pos] if n_pos else 0.0)
        out[j] = max(0.0, psi[n] + (sum_k - sum_count - total - change[j]) / n)
    return out


@njit(cache=True, inline='always')
def _nearest(values, i, k, labels=None, skip=-1, taken=None, taken_gaps=None):
    """The k-th smallest gap |fl(v_i - v_j)| over j != i (skipping samples labelled `skip`), by
    merging outward from sorted position i; also where that k-th neighbour is, and the farthest
    neighbour taken on the other side (i if none). With `taken` and `taken_gaps`, the positions
    and gaps of all k in merge order."""
    n = len(values)
    left, right, gap = i - 1, i + 1, 0.0
    last_left, last_right, on_right = i, i, False
    for t in range(k):
        if labels is not None:
            while left >= 0 and labels[left] == skip:
                left -= 1
            while right < n and labels[right] == skip:
                right += 1
        dl = values[i] - values[left] if left >= 0 else np.inf
        dr = values[right] - values[i] if right < n else np.inf
        on_right = dr < dl
        if on_right:
            gap, last_right = dr, right
            right += 1
        else:
            gap, last_left = dl, left
            left -= 1
        if taken is not None:
            taken[t], taken_gaps[t] = (last_right if on_right else last_left), gap
    return (gap, last_right, last_left) if on_right else (gap, last_left, last_right)


@njit(cache=True, inline='always')
def _count_near(xs, ls, i, near, gaps, k, skip):
    """m for sample i with its radius set by the k-th of its nearest samples not labelled `skip`
    (-1: none skipped), read off the merge order of its nearest: every sample closer than that
    neighbour comes before it there, so m is its rank less the ties at its gap. Dropping one
    label from both sides of a merge leaves the order of the rest. Falls back to a merge and a
    search when the list is too short or the radius is 0 (then all exact ties count)."""
    taken = 0
    for t in range(len(near)):
        if ls[near[t]] == skip:
            continue
        taken += 1
        if taken == k:
            r = gaps[t]
            if r == 0.0:
                break
            m = t + 1  # i itself and the t samples merged before
            while t > 0 and gaps[t - 1] == r:
                m -= 1
                t -= 1
            return m
    r, kth, other = _nearest(xs, i, k, ls, skip)
    return _count(xs, i, r, kth, other)


@njit(cache=True, inline='always')
def _label_among(ls, near, t, c):
    """Whether one of the t nearest samples is labelled c."""
    for j in near[:t]:
        if ls[j] == c:
            return True
    return False


@njit(cache=True, inline='always')
def _count(xs, i, gap, kth, other):
    """m: how many samples j (i included) have |fl(xs_j - xs_i)| inside radius nextafter(gap, 0).

    The gap is monotone in j on each side, so they form a run; its ends are searched from the
    sample just inside the k-th neighbour and from the farthest neighbour taken on the other side.
    scikit-learn keeps gap <= nextafter(r_k, 0): strictly closer than the k-th neighbour, or an
    exact tie when r_k is 0. For gaps >= 0 that is one test: gap < max(r_k, tiniest).
    """
    limit = max(gap, _TINIEST)
    toward = 1 if kth > i else -1
    end = _run_end(xs, i, limit, kth - toward, toward)
    start = _run_end(xs, i, limit, other, -toward)
    return abs(end - start) + 1


_TINIEST = 5e-324  # the smallest positive double: gap < _TINIEST means gap == 0
_SCAN = 16  # samples checked one by one before galloping


@njit(cache=True, inline='always')
def _run_end(xs, i, limit, start, step):
    """The farthest position from i in direction step (+1 or -1) whose gap from xs_i is below
    limit, searched from `start`: inward if start is outside, else outward, galloping over long
    runs (dense clusters, ties) so they cost O(log m)."""
    n = len(xs)
    j = start
    if _gap(xs, i, j) >= limit:
        j -= step
        while _gap(xs, i, j) >= limit:
            j -= step
        return j
    for _ in range(_SCAN):
        if not 0 <= j + step < n or _gap(xs, i, j + step) >= limit:
            return j
        j += step
    jump = 1
    while 0 <= j + step * jump < n and _gap(xs, i, j + step * jump) < limit:
        j += step * jump
        jump *= 2
    outside = min(max(j + step * jump, -1), n)  # fails the test, or lies past the end
    while abs(outside - j) > 1:
        middle = (j + outside) // 2
        if _gap(xs, i, middle) < limit:
            j = middle
        else:
            outside = middle
    return j


@njit(cache=True, inline='always')
def _gap(xs, i, j):
    return xs[j] - xs[i] if j >= i else xs[i] - xs[j]


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
def _mi_binary(xs, is_pos, n_neighbors, override, psi):
    """One class of one sorted feature, any group sizes: each group's radii (from `override`
    where scikit-learn's brute-force search sets them), then counts over all samples."""
    n = len(xs)
    n_pos = 0
    for i in range(n):
        n_pos += is_pos[i]
    counts = (n - n_pos, n_pos)  # group 0: negatives, group 1: positives
    positions = (np.nonzero(~is_pos)[0], np.nonzero(is_pos)[0])
    n_kept = 0
    sum_psi_k = 0.0
    sum_psi_count = 0.0
    sum_psi_m = 0.0
    dropped = -1  # the lone member of a one-sample group, left out of every count
    for g in range(2):
        if counts[g] == 1:
            dropped = positions[g][0]
    for g in range(2):
        count = counts[g]
        if count < 2:
            continue
        k = min(n_neighbors, count - 1)
        members = positions[g]
        values = xs[members]
        for t in range(count):
            i = members[t]
            r, kth, other = _nearest(values, t, k)
            if np.isnan(override[i]):
                kth, other = members[kth], members[other]
            else:  # a radius not read off the sorted gaps: search its run from i
                r, kth, other = override[i], i + 1 if i + 1 < n else i - 1, i
            m = _count(xs, i, r, kth, other)
            if dropped >= 0 and abs(xs[dropped] - xs[i]) < max(r, _TINIEST):
                m -= 1
            sum_psi_m += psi[m]
        n_kept += count
        sum_psi_k += count * psi[k]
        sum_psi_count += count * psi[count]
    if n_kept == 0:
        return 0.0
    mi = psi[n_kept] + (sum_psi_k - sum_psi_count - sum_psi_m) / n_kept
    return max(0.0, mi)
