"""Data layer: record types, dataset loaders and the synthetic street-to-shop benchmark."""

from .loaders import (
    CSV_COLUMNS,
    load_csv_manifest,
    load_dataset,
    load_deepfashion_consumer2shop,
    parse_tags,
    write_csv_manifest,
)
from .records import DOMAINS, SPLITS, DatasetError, ImageRecord, RetrievalDataset

__all__ = [
    "CSV_COLUMNS",
    "DOMAINS",
    "SPLITS",
    "DatasetError",
    "ImageRecord",
    "RetrievalDataset",
    "load_csv_manifest",
    "load_dataset",
    "load_deepfashion_consumer2shop",
    "parse_tags",
    "write_csv_manifest",
]
