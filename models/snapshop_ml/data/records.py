"""Record types shared by every dataset loader.

A retrieval dataset is a flat list of :class:`ImageRecord` rows. Each row is one image of one
product, taken either in the ``user`` domain (a street photo: the query side) or in the ``shop``
domain (a catalogue photo: the gallery side). Products never cross splits.

Products of the val/test splits that have shop images but no user image are *distractors*: they
only enlarge the gallery.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DOMAINS = ("user", "shop")
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset file is missing or malformed. The message names the file (and line)."""


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute path of the image file
    product_id: str
    domain: str  # "user" (street photo) or "shop"
    split: str  # "train" | "val" | "test"
    tags: tuple[str, ...] = ()  # sorted "key:value" strings; may be empty
    bbox: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 if the source has one


@dataclass
class RetrievalDataset:
    name: str
    records: list[ImageRecord] = field(default_factory=list)

    def subset(self, split: str, domain: str | None = None) -> list[ImageRecord]:
        """Records of one split (and optionally one domain), in dataset order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        if domain is not None and domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r} (expected one of {', '.join(DOMAINS)})")
        return [
            r for r in self.records if r.split == split and (domain is None or r.domain == domain)
        ]

    def tag_vocabulary(self) -> list[str]:
        """Sorted set of all tags carried by shop images of the train split."""
        return sorted({t for r in self.records if r.split == "train" and r.domain == "shop" for t in r.tags})

    def products(self, split: str | None = None) -> list[str]:
        """Distinct product ids (of one split), in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.records:
            if split is None or r.split == split:
                seen.setdefault(r.product_id, None)
        return list(seen)

    def stats(self) -> dict:
        """Per split: products, user images, shop images, distractor products.

        ``products`` counts products that have at least one user image (the query products);
        ``distractor_products`` counts products with shop images only.
        """
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            domains: dict[str, set[str]] = defaultdict(set)
            n_user = n_shop = 0
            for r in self.records:
                if r.split != split:
                    continue
                domains[r.product_id].add(r.domain)
                if r.domain == "user":
                    n_user += 1
                else:
                    n_shop += 1
            out[split] = {
                "products": sum(1 for d in domains.values() if "user" in d),
                "user_images": n_user,
                "shop_images": n_shop,
                "distractor_products": sum(1 for d in domains.values() if d == {"shop"}),
            }
        return out

    def __len__(self) -> int:
        return len(self.records)
