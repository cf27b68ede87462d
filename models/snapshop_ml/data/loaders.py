"""Dataset loaders: the project's CSV manifest and DeepFashion Consumer-to-shop.

CSV manifest (read by the Rust service's ``snapshop eval`` too; keep it exactly so)::

    image,product_id,domain,split,tags
    images/train/p000000/shop_0.jpg,p000000,shop,train,category:tshirt;color:red;pattern:solid

* ``image``: path relative to the CSV file's directory (``/`` separated);
* ``domain``: ``user`` (street photo, query side) or ``shop`` (catalogue photo, gallery side);
* ``split``: ``train``, ``val`` or ``test``; a product belongs to exactly one split;
* ``tags``: ``;``-joined ``key:value`` strings, may be empty.

DeepFashion Consumer-to-shop Clothes Retrieval Benchmark, published layout under ``root``::

    Eval/list_eval_partition.txt     count / header / "<consumer image> <shop image> <item id> <status>"
    Anno/list_bbox_consumer2shop.txt count / header / "<image> <clothes type> <source type> x1 y1 x2 y2"
    Anno/list_attr_cloth.txt         count / header / "<name (Chinese)> <name (English)> <attribute type>"
    Anno/list_attr_items.txt         count / header / "<item id> <label 1> ... <label N>" (1, -1 or 0)
    img/...  (or Img/img/...)        the images, named as in the partition file

Mapping to :class:`ImageRecord`:

* ``product_id`` = the item id (``id_00000001``); ``split`` = the evaluation status
  (``train`` / ``val`` / ``test``, DeepFashion's own spelling);
* ``domain``: the first image of a partition pair is the consumer photo (``user``), the second the
  shop photo (``shop``); ``list_bbox_consumer2shop.txt``'s source type (1 = shop, 2 = consumer)
  must agree when present;
* ``bbox`` from ``list_bbox_consumer2shop.txt`` (absent if that file is missing);
* tags (on shop images only; street photos carry none, as in the paper):
  ``category:upper_body`` / ``category:lower_body`` / ``category:full_body`` from the bbox file's
  clothes type (1/2/3); ``type:<folder>`` from the image path ``img/<GROUP>/<Folder>/<id>/...``
  (lower-cased, e.g. ``type:summer_wear``); ``attr:<english_name>`` for every attribute labelled
  ``1`` for the item (lower-cased, non-alphanumerics folded to ``_``, e.g. ``attr:lace``).
  ``list_attr_type.txt`` is not needed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from .records import DOMAINS, SPLITS, DatasetError, ImageRecord, RetrievalDataset

CSV_COLUMNS = ("image", "product_id", "domain", "split", "tags")


# --------------------------------------------------------------------------------------------
# tags


def parse_tags(text: str, where: str = "") -> tuple[str, ...]:
    """Parse a ``;``-joined tag list into sorted, de-duplicated ``key:value`` strings."""
    tags = set()
    for raw in text.split(";"):
        tag = raw.strip()
        if not tag:
            continue
        key, sep, value = tag.partition(":")
        if not sep or not key.strip() or not value.strip():
            raise DatasetError(f"{where}malformed tag {tag!r} (expected key:value)")
        if "," in tag or '"' in tag:
            raise DatasetError(f"{where}malformed tag {tag!r} (no ',' or '\"' allowed)")
        tags.add(f"{key.strip()}:{value.strip()}")
    return tuple(sorted(tags))


def _check_tags(tags: Iterable[str], where: str) -> tuple[str, ...]:
    bad = next((t for t in tags if ";" in t), None)
    if bad is not None:
        raise DatasetError(f"{where}malformed tag {bad!r} (contains ';')")
    return parse_tags(";".join(tags), where)


# --------------------------------------------------------------------------------------------
# CSV manifest


def load_csv_manifest(path: str | os.PathLike, check_images: bool = True) -> RetrievalDataset:
    """Load a CSV manifest. Raises :class:`DatasetError` (with file and line) on bad input."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest file not found")
    base = path.resolve().parent
    records: list[ImageRecord] = []
    product_split: dict[str, tuple[str, int]] = {}
    seen_images: dict[Path, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}:1: empty file (expected header {','.join(CSV_COLUMNS)})")
            header = [h.strip() for h in header]
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DatasetError(
                    f"{path}:1: missing column(s) {', '.join(missing)} "
                    f"(header must be {','.join(CSV_COLUMNS)})"
                )
            col = {c: header.index(c) for c in CSV_COLUMNS}
            for row in reader:
                line = reader.line_num
                where = f"{path}:{line}: "
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise DatasetError(f"{where}expected {len(header)} fields, found {len(row)}")
                image = row[col["image"]].strip()
                product = row[col["product_id"]].strip()
                domain = row[col["domain"]].strip()
                split = row[col["split"]].strip()
                if not image:
                    raise DatasetError(f"{where}empty image path")
                if not product:
                    raise DatasetError(f"{where}empty product_id")
                if domain not in DOMAINS:
                    raise DatasetError(f"{where}unknown domain {domain!r} (expected user or shop)")
                if split not in SPLITS:
                    raise DatasetError(f"{where}unknown split {split!r} (expected train, val or test)")
                tags = parse_tags(row[col["tags"]], where)
                img_path = (base / image).resolve()
                if check_images and not img_path.is_file():
                    raise DatasetError(f"{where}image file not found: {image}")
                if img_path in seen_images:
                    raise DatasetError(f"{where}image {image} already listed at line {seen_images[img_path]}")
                seen_images[img_path] = line
                prev = product_split.setdefault(product, (split, line))
                if prev[0] != split:
                    raise DatasetError(
                        f"{where}product {product} is in split {split} here but in {prev[0]} at line {prev[1]}"
                    )
                records.append(ImageRecord(img_path, product, domain, split, tags))
    except csv.Error as exc:
        raise DatasetError(f"{path}:{reader.line_num}: CSV syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not records:
        raise DatasetError(f"{path}: no image rows")
    return RetrievalDataset(name=base.name, records=records)


def write_csv_manifest(
    dataset_or_records: RetrievalDataset | Iterable[ImageRecord], path: str | os.PathLike
) -> Path:
    """Write records as a CSV manifest; image paths are made relative to the CSV's directory.

    The output is byte-deterministic: ``\\n`` line endings, rows in the given order, tags sorted.
    """
    records = (
        dataset_or_records.records
        if isinstance(dataset_or_records, RetrievalDataset)
        else list(dataset_or_records)
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i, r in enumerate(records):
            where = f"record {i} ({r.path}): "
            if r.domain not in DOMAINS:
                raise DatasetError(f"{where}unknown domain {r.domain!r}")
            if r.split not in SPLITS:
                raise DatasetError(f"{where}unknown split {r.split!r}")
            tags = _check_tags(r.tags, where)
            p = Path(r.path).resolve()  # records hold absolute paths; a relative one is taken from the cwd
            try:
                rel = Path(os.path.relpath(p, base)).as_posix()
            except ValueError:  # another drive (Windows)
                rel = p.resolve().as_posix()
            writer.writerow([rel, r.product_id, r.domain, r.split, ";".join(tags)])
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# DeepFashion Consumer-to-shop

_CLOTHES_TYPE = {"1": "upper_body", "2": "lower_body", "3": "full_body"}
_SOURCE_TYPE = {"1": "shop", "2": "user"}


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_")


def _read_listing(path: Path, required: bool = True) -> list[tuple[int, list[str]]] | None:
    """DeepFashion list file: line 1 = count, line 2 = column names, then rows.

    Returns ``[(line_number, tokens), ...]`` for the data rows; checks the count.
    """
    if not path.is_file():
        if required:
            raise DatasetError(f"{path}: file not found")
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if len(lines) < 2:
        raise DatasetError(f"{path}:1: expected a count line and a header line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DatasetError(f"{path}:1: expected the number of entries, found {lines[0].strip()!r}") from None
    rows = [(i + 1, ln.split()) for i, ln in enumerate(lines) if i >= 2 and ln.strip()]
    if count != len(rows):
        raise DatasetError(f"{path}:1: header says {count} entries but the file has {len(rows)}")
    return rows


def _find_image(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / "Img" / name, root / "img" / name):
        if cand.is_file():
            return cand.resolve()
    return None


def load_deepfashion_consumer2shop(root: str | os.PathLike, check_images: bool = True) -> RetrievalDataset:
    """Load DeepFashion's Consumer-to-shop benchmark from its published layout (see module doc)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    part_path = root / "Eval" / "list_eval_partition.txt"
    bbox_path = root / "Anno" / "list_bbox_consumer2shop.txt"
    attr_cloth_path = root / "Anno" / "list_attr_cloth.txt"
    attr_items_path = root / "Anno" / "list_attr_items.txt"
    if not part_path.is_file():
        raise DatasetError(f"{part_path}: file not found (not a DeepFashion Consumer-to-shop root?)")

    # bounding boxes (optional)
    bboxes: dict[str, tuple[str, str, tuple[int, int, int, int]]] = {}
    bbox_rows = _read_listing(bbox_path, required=False)
    for line, tok in bbox_rows or []:
        where = f"{bbox_path}:{line}: "
        if len(tok) != 7:
            raise DatasetError(f"{where}expected 7 fields (image, clothes type, source type, x1 y1 x2 y2), found {len(tok)}")
        name, ctype, stype = tok[:3]
        if ctype not in _CLOTHES_TYPE:
            raise DatasetError(f"{where}unknown clothes type {ctype!r} (expected 1, 2 or 3)")
        if stype not in _SOURCE_TYPE:
            raise DatasetError(f"{where}unknown source type {stype!r} (expected 1 = shop or 2 = consumer)")
        try:
            x1, y1, x2, y2 = (int(v) for v in tok[3:])
        except ValueError:
            raise DatasetError(f"{where}bbox coordinates must be integers") from None
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{where}bbox has x2 < x1 or y2 < y1")
        bboxes[name] = (ctype, stype, (x1, y1, x2, y2))

    # attributes (optional, both files or neither)
    item_attrs: dict[str, list[str]] = {}
    cloth_rows = _read_listing(attr_cloth_path, required=False)
    items_rows = _read_listing(attr_items_path, required=False)
    if (cloth_rows is None) != (items_rows is None):
        missing = attr_cloth_path if cloth_rows is None else attr_items_path
        raise DatasetError(f"{missing}: file not found (the attribute lists come in pairs)")
    if cloth_rows is not None:
        names = []
        for line, tok in cloth_rows:
            where = f"{attr_cloth_path}:{line}: "
            if len(tok) < 2 or not tok[-1].lstrip("-").isdigit():
                raise DatasetError(f"{where}expected '<name> ... <attribute type>'")
            words = tok[:-1]
            if len(words) > 1 and not words[0].isascii():
                words = words[1:]  # drop the Chinese name
            slug = _slug(" ".join(words))
            names.append(slug or f"attr_{len(names) + 1}")
        for line, tok in items_rows:
            where = f"{attr_items_path}:{line}: "
            if len(tok) != len(names) + 1:
                raise DatasetError(f"{where}expected item id and {len(names)} labels, found {len(tok) - 1} labels")
            labels = tok[1:]
            bad = next((v for v in labels if v not in ("1", "-1", "0")), None)
            if bad is not None:
                raise DatasetError(f"{where}attribute label {bad!r} is not 1, -1 or 0")
            item_attrs[tok[0]] = [f"attr:{n}" for n, v in zip(names, labels) if v == "1"]

    # partition
    images: dict[str, tuple[str, str, str, int]] = {}  # name -> (item, split, domain, line)
    order: list[str] = []
    for line, tok in _read_listing(part_path):
        where = f"{part_path}:{line}: "
        if len(tok) != 4:
            raise DatasetError(f"{where}expected 4 fields (consumer image, shop image, item id, status), found {len(tok)}")
        user_img, shop_img, item, status = tok
        if status not in SPLITS:
            raise DatasetError(f"{where}unknown evaluation status {status!r} (expected train, val or test)")
        for name, domain in ((user_img, "user"), (shop_img, "shop")):
            prev = images.get(name)
            if prev is None:
                images[name] = (item, status, domain, line)
                order.append(name)
            elif prev[:3] != (item, status, domain):
                raise DatasetError(
                    f"{where}{name} listed as {domain}/{item}/{status} here but {prev[2]}/{prev[0]}/{prev[1]} at line {prev[3]}"
                )

    records = []
    item_split: dict[str, tuple[str, int]] = {}
    for name in order:
        item, split, domain, line = images[name]
        where = f"{part_path}:{line}: "
        prev = item_split.setdefault(item, (split, line))
        if prev[0] != split:
            raise DatasetError(f"{where}item {item} is in split {split} here but in {prev[0]} at line {prev[1]}")
        bbox = None
        ctype = None
        if name in bboxes:
            ctype, stype, bbox = bboxes[name]
            if _SOURCE_TYPE[stype] != domain:
                raise DatasetError(
                    f"{where}{name} is a {domain} image here but source type {stype} in {bbox_path.name}"
                )
        path = _find_image(root, name)
        if path is None:
            if check_images:
                raise DatasetError(f"{where}image file not found: {name}")
            path = (root / name).resolve()
        tags: tuple[str, ...] = ()
        if domain == "shop":
            t = set(item_attrs.get(item, ()))
            if ctype is not None:
                t.add(f"category:{_CLOTHES_TYPE[ctype]}")
            parts = Path(name).parts
            if len(parts) >= 5 and parts[0].lower() == "img":
                folder = _slug(parts[2])
                if folder:
                    t.add(f"type:{folder}")
            tags = tuple(sorted(t))
        records.append(ImageRecord(path, item, domain, split, tags, bbox))
    if not records:
        raise DatasetError(f"{part_path}: no image pairs")
    return RetrievalDataset(name=root.resolve().name, records=records)


# --------------------------------------------------------------------------------------------
# dispatch


def load_dataset(path: str | os.PathLike, check_images: bool = True) -> RetrievalDataset:
    """Load a dataset: a ``.csv`` manifest, a directory holding ``manifest.csv``, or a
    DeepFashion Consumer-to-shop root (a directory with ``Eval/list_eval_partition.txt``)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return load_csv_manifest(p, check_images=check_images)
        raise DatasetError(f"{p}: not a .csv manifest or a dataset directory")
    if p.is_dir():
        if (p / "Eval" / "list_eval_partition.txt").is_file():
            return load_deepfashion_consumer2shop(p, check_images=check_images)
        if (p / "manifest.csv").is_file():
            return load_csv_manifest(p / "manifest.csv", check_images=check_images)
        raise DatasetError(
            f"{p}: directory has neither manifest.csv nor Eval/list_eval_partition.txt (DeepFashion)"
        )
    raise DatasetError(f"{p}: no such file or directory")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Validate a dataset and print its statistics.")
    ap.add_argument("path", help="manifest.csv, a directory holding one, or a DeepFashion root")
    ap.add_argument("--no-check-images", action="store_true", help="do not check image files exist")
    args = ap.parse_args(argv)
    try:
        ds = load_dataset(args.path, check_images=not args.no_check_images)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"name": ds.name, "images": len(ds), "splits": ds.stats(),
                      "tags": len(ds.tag_vocabulary())}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
