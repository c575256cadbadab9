"""Label recovery accuracy: order-free, as a multiset (batches carry no order)."""

from __future__ import annotations

from collections import Counter

import numpy as np


def label_accuracy(pred, true) -> float:
    """Fraction of true labels present in the prediction, counted with multiplicity."""
    true = [int(t) for t in np.asarray(true).ravel()]
    if not true:
        return float("nan")
    pc, tc = Counter(int(p) for p in np.asarray(pred).ravel()), Counter(true)
    return sum(min(c, pc[k]) for k, c in tc.items()) / len(true)
