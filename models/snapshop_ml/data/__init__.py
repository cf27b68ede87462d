"""Data layer: record types, dataset loaders and the synthetic street-to-shop benchmark.

``records`` (ImageRecord, RetrievalDataset, DatasetError), ``loaders`` (CSV manifest,
DeepFashion Consumer-to-shop, ``load_dataset``), ``synth`` (the generated benchmark) and
``baseline_check`` (pretrained MobileNetV2 P@K floor).
"""

from .records import DOMAINS, SPLITS, DatasetError, ImageRecord, RetrievalDataset

_LOADERS = ("CSV_COLUMNS", "load_csv_manifest", "load_dataset", "load_deepfashion_consumer2shop",
            "parse_tags", "write_csv_manifest")

__all__ = ["DOMAINS", "SPLITS", "DatasetError", "ImageRecord", "RetrievalDataset", *_LOADERS]


def __getattr__(name: str):
    # imported lazily so that `python -m snapshop_ml.data.loaders` runs without a runpy warning
    if name in _LOADERS:
        from . import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
