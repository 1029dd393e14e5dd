"""`digits`: scikit-learn's bundled handwritten digits (1,797 real 8x8 images), nothing to download."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from csg.data.registry import DatasetFamily, DatasetInfo, register

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_split():
    """(x_train, x_test, y_train, y_test): (N, 1, 8, 8) float32 images in [0, 1] and int64
    labels, the same stratified split every call (digits-scenes and the tests build on it)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels,
                            random_state=DIGITS_SPLIT_SEED)


@register
class Digits(DatasetFamily):
    names = ("digits",)

    def describe(self, name, root):
        x_train = digits_split()[0]
        return DatasetInfo(10, len(x_train), 1, (float(x_train.mean()),), (float(x_train.std()),))

    def load(self, name, root, image_size, skip_bad_images, augment, decode=None):
        x_train, x_test, y_train, y_test = digits_split()
        return (TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)))
