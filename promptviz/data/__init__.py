"""Datasets for prompt tuning: CoOp's benchmark layout, dataset cards,
folder-per-class directories, few-shot and base/novel splits, CLIP transforms.

    from promptviz.data import load_dataset, few_shot, subsample_classes
    ds = load_dataset("dtd", "/data")          # or a folder path
    ds16 = few_shot(ds, shots=16, seed=1)      # 16 train images per class
    base = subsample_classes(ds16, "base")     # first half of the classes
"""

from __future__ import annotations

from promptviz.data.datasets import KNOWN_DATASETS, Dataset, DatasetSpec, Sample, find_spec
from promptviz.data.fewshot import few_shot, subsample_classes
from promptviz.data.load import load_dataset
from promptviz.data.readers import read_split_zhou
from promptviz.data.report import DatasetReport, format_report, scan_data_root
from promptviz.data.transforms import (
    ImageDataset,
    ImageReadError,
    clip_transform,
    load_images,
    read_image,
    train_transform,
)

__all__ = [
    "KNOWN_DATASETS",
    "Dataset",
    "DatasetReport",
    "DatasetSpec",
    "ImageDataset",
    "ImageReadError",
    "Sample",
    "clip_transform",
    "few_shot",
    "find_spec",
    "format_report",
    "load_dataset",
    "load_images",
    "read_image",
    "read_split_zhou",
    "scan_data_root",
    "subsample_classes",
    "train_transform",
]
