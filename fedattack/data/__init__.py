"""Datasets (registry `DATASETS`) and partitioners (registry `PARTITIONERS`)."""

from fedattack.data.datasets import DATASETS, ImageData, load_dataset
from fedattack.data.partition import PARTITIONERS, partition

__all__ = ["DATASETS", "PARTITIONERS", "ImageData", "load_dataset", "partition"]
