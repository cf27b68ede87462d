"""Loaders: CSV manifest and DeepFashion Consumer-to-shop, on the tiny committed fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from snapshop_ml.data import (
    DatasetError,
    ImageRecord,
    RetrievalDataset,
    load_csv_manifest,
    load_dataset,
    load_deepfashion_consumer2shop,
    parse_tags,
    write_csv_manifest,
)

FIX = Path(__file__).resolve().parent / "fixtures"
CSV_TINY = FIX / "csv_tiny"
DF_TINY = FIX / "deepfashion_tiny"
HEADER = "image,product_id,domain,split,tags"


# ------------------------------------------------------------------------------------------ CSV


def test_csv_records():
    ds = load_csv_manifest(CSV_TINY / "manifest.csv")
    assert isinstance(ds, RetrievalDataset)
    assert len(ds) == 9
    r0 = ds.records[0]
    assert r0 == ImageRecord((CSV_TINY / "images/a_shop.png").resolve(), "a", "shop", "train",
                             ("category:tshirt", "color:red", "pattern:solid"))
    assert r0.path.is_absolute() and r0.path.is_file()
    # tags are sorted on load, user photos carry none, no bboxes in CSV
    c_shop = next(r for r in ds.records if r.product_id == "c" and r.domain == "shop")
    assert c_shop.tags == ("category:shirt", "pattern:stripes")
    assert all(r.tags == () for r in ds.records if r.domain == "user")
    assert all(r.bbox is None for r in ds.records)


def test_csv_subsets_vocab_stats():
    ds = load_csv_manifest(CSV_TINY / "manifest.csv")
    assert [r.product_id for r in ds.subset("train", "user")] == ["a", "b"]
    assert [r.product_id for r in ds.subset("test", "shop")] == ["d", "e"]
    assert len(ds.subset("val")) == 2
    assert ds.tag_vocabulary() == ["category:dress", "category:tshirt", "color:blue", "color:red",
                                   "pattern:dots", "pattern:solid", "sleeve:none"]
    st = ds.stats()
    assert st["train"] == {"products": 2, "user_images": 2, "shop_images": 2, "distractor_products": 0}
    assert st["test"] == {"products": 1, "user_images": 1, "shop_images": 2, "distractor_products": 1}
    with pytest.raises(ValueError):
        ds.subset("dev")


def test_csv_roundtrip(tmp_path):
    ds = load_csv_manifest(CSV_TINY / "manifest.csv")
    out = tmp_path / "sub" / "m.csv"
    write_csv_manifest(ds, out)
    text = out.read_text()
    assert text.startswith(HEADER + "\n") and "\r" not in text
    again = load_csv_manifest(out)
    assert again.records == ds.records
    # writing the same records again is byte-identical; a list of records works too
    out2 = tmp_path / "sub" / "m2.csv"
    write_csv_manifest(list(ds.records), out2)
    assert out2.read_bytes() == out.read_bytes()


def test_csv_written_next_to_images(tmp_path):
    shutil.copytree(CSV_TINY, tmp_path / "d")
    ds = load_csv_manifest(tmp_path / "d" / "manifest.csv")
    write_csv_manifest(ds, tmp_path / "d" / "again.csv")
    lines = (tmp_path / "d" / "again.csv").read_text().splitlines()
    assert lines[0] == HEADER
    assert lines[1] == "images/a_shop.png,a,shop,train,category:tshirt;color:red;pattern:solid"
    assert lines[2] == "images/a_user.jpg,a,user,train,"


def test_parse_tags():
    assert parse_tags(" b:2 ; a:1;;a:1 ") == ("a:1", "b:2")
    assert parse_tags("") == ()
    with pytest.raises(DatasetError, match="malformed tag"):
        parse_tags("nocolon")
    with pytest.raises(DatasetError, match="malformed tag"):
        parse_tags("key:")


def _bad_csv(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    d = tmp_path / "bad"
    shutil.copytree(CSV_TINY / "images", d / "images")
    p = d / "manifest.csv"
    p.write_text(header + "\n" + body)
    return p


@pytest.mark.parametrize(
    "header,body,line,message",
    [
        ("image,product_id,domain,tags", "images/a_shop.png,a,shop,\n", 1, "missing column(s) split"),
        (HEADER, "images/a_shop.png,a,shop,train,\nimages/a_user.jpg,a,street,train,\n", 3, "unknown domain 'street'"),
        (HEADER, "images/a_shop.png,a,shop,dev,\n", 2, "unknown split 'dev'"),
        (HEADER, "images/a_shop.png,a,shop,train,category:tshirt;red\n", 2, "malformed tag 'red'"),
        (HEADER, "images/a_shop.png,a,shop,train,\nimages/zzz.jpg,a,user,train,\n", 3, "image file not found: images/zzz.jpg"),
        (HEADER, "images/a_shop.png,a,shop,train\n", 2, "expected 5 fields, found 4"),
        (HEADER, "images/a_shop.png,a,shop,train,\nimages/a_user.jpg,a,user,test,\n", 3, "product a is in split test"),
        (HEADER, "images/a_shop.png,a,shop,train,\nimages/a_shop.png,a,shop,train,\n", 3, "already listed at line 2"),
        (HEADER, ",a,shop,train,\n", 2, "empty image path"),
        (HEADER, "images/a_shop.png,,shop,train,\n", 2, "empty product_id"),
    ],
)
def test_csv_bad_input(tmp_path, header, body, line, message):
    p = _bad_csv(tmp_path, body, header)
    with pytest.raises(DatasetError) as exc:
        load_csv_manifest(p)
    text = str(exc.value)
    assert f"{p}:{line}: " in text
    assert message in text
    assert "\n" not in text


def test_csv_missing_and_empty(tmp_path):
    with pytest.raises(DatasetError, match="manifest file not found"):
        load_csv_manifest(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        load_csv_manifest(empty)
    only_header = tmp_path / "h.csv"
    only_header.write_text(HEADER + "\n")
    with pytest.raises(DatasetError, match="no image rows"):
        load_csv_manifest(only_header)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_csv_manifest(binary)


def test_csv_unterminated_quote(tmp_path):
    import csv

    old = csv.field_size_limit(64)
    try:
        p = _bad_csv(tmp_path, 'images/a_shop.png,a,shop,train,"' + "x" * 100 + "\n")
        with pytest.raises(DatasetError, match="CSV syntax error"):
            load_csv_manifest(p)
    finally:
        csv.field_size_limit(old)


def test_write_rejects_bad_records(tmp_path):
    img = (CSV_TINY / "images/a_shop.png").resolve()
    with pytest.raises(DatasetError, match="unknown domain"):
        write_csv_manifest([ImageRecord(img, "a", "street", "train")], tmp_path / "m.csv")
    with pytest.raises(DatasetError, match="malformed tag"):
        write_csv_manifest([ImageRecord(img, "a", "shop", "train", ("a:b;c:d",))], tmp_path / "m.csv")
    with pytest.raises(DatasetError, match="malformed tag"):
        write_csv_manifest([ImageRecord(img, "a", "shop", "train", ("novalue",))], tmp_path / "m.csv")


# ------------------------------------------------------------------------------------------ DeepFashion


def test_deepfashion_records():
    ds = load_deepfashion_consumer2shop(DF_TINY)
    assert len(ds) == 10  # shop_01 of item 1 is listed twice but loaded once
    by = {(r.product_id, r.path.name): r for r in ds.records}
    u = by[("id_00000001", "comsumer_01.jpg")]
    assert (u.domain, u.split, u.tags, u.bbox) == ("user", "train", (), (1, 2, 10, 15))
    s = by[("id_00000001", "shop_01.jpg")]
    assert s.domain == "shop" and s.split == "train" and s.bbox == (2, 2, 9, 15)
    assert s.tags == ("attr:floral", "attr:long_sleeve", "category:upper_body", "type:t_shirt")
    assert s.path == (DF_TINY / "img/TOPS/T_Shirt/id_00000001/shop_01.jpg").resolve()
    v = by[("id_00000002", "shop_02.jpg")]
    assert v.split == "val" and v.tags == ("attr:stripe", "attr:v_neck", "category:upper_body", "type:summer_wear")
    d = by[("id_00000003", "shop_01.jpg")]
    assert d.split == "test" and d.tags == ("category:full_body", "type:dress")
    assert by[("id_00000004", "shop_01.jpg")].tags == ("category:lower_body", "type:pants")
    st = ds.stats()
    assert st["val"] == {"products": 1, "user_images": 1, "shop_images": 2, "distractor_products": 0}
    assert st["test"]["products"] == 2
    assert ds.tag_vocabulary() == ["attr:floral", "attr:long_sleeve", "category:upper_body", "type:t_shirt"]


def test_deepfashion_without_optional_annotations(tmp_path):
    root = tmp_path / "df"
    shutil.copytree(DF_TINY, root)
    for f in ("list_bbox_consumer2shop.txt", "list_attr_cloth.txt", "list_attr_items.txt"):
        (root / "Anno" / f).unlink()
    ds = load_deepfashion_consumer2shop(root)
    assert len(ds) == 10
    assert all(r.bbox is None for r in ds.records)
    shop = [r for r in ds.records if r.domain == "shop"]
    assert shop[0].tags == ("type:t_shirt",)


def test_deepfashion_images_under_Img(tmp_path):
    root = tmp_path / "df"
    shutil.copytree(DF_TINY, root)
    (root / "Img").mkdir()
    (root / "img").rename(root / "Img" / "img")
    ds = load_deepfashion_consumer2shop(root)
    assert all(r.path.is_file() and "/Img/img/" in r.path.as_posix() for r in ds.records)


def _df_copy(tmp_path: Path) -> Path:
    root = tmp_path / "df"
    shutil.copytree(DF_TINY, root)
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    "fname,old,new,line,message",
    [
        ("Eval/list_eval_partition.txt", "id_00000003 test", "id_00000003 gallery", 7, "unknown evaluation status 'gallery'"),
        ("Eval/list_eval_partition.txt", "id_00000003 test", "id_00000003", 7, "expected 4 fields"),
        ("Eval/list_eval_partition.txt", "6\n", "7\n", 1, "header says 7 entries but the file has 6"),
        ("Eval/list_eval_partition.txt", "id_00000004/comsumer_01.jpg", "id_00000004/comsumer_09.jpg", 8, "image file not found"),
        ("Eval/list_eval_partition.txt", "id_00000002 val\nimg", "id_00000002 test\nimg", 6, "listed as user/id_00000002/val here but user/id_00000002/test at line 5"),
        ("Anno/list_bbox_consumer2shop.txt", "shop_01.jpg 1 1", "shop_01.jpg 1 7", 4, "unknown source type '7'"),
        ("Anno/list_bbox_consumer2shop.txt", "shop_01.jpg 1 1 2 2 9 15", "shop_01.jpg 1 1 2 2 9", 4, "expected 7 fields"),
        ("Anno/list_bbox_consumer2shop.txt", "shop_01.jpg 1 1 2 2 9 15", "shop_01.jpg 1 1 2 2 a 15", 4, "must be integers"),
        ("Anno/list_bbox_consumer2shop.txt", "shop_01.jpg 1 1", "shop_01.jpg 1 2", 4, "is a shop image here but source type 2"),
        ("Anno/list_attr_items.txt", "id_00000001 1 -1 1 0", "id_00000001 1 -1 1", 3, "expected item id and 4 labels, found 3"),
        ("Anno/list_attr_items.txt", "id_00000001 1 -1 1 0", "id_00000001 1 -1 1 2", 3, "attribute label '2'"),
        ("Anno/list_attr_cloth.txt", "4\nattribute_name", "x\nattribute_name", 1, "expected the number of entries"),
    ],
)
def test_deepfashion_bad_input(tmp_path, fname, old, new, line, message):
    root = _df_copy(tmp_path)
    _edit(root / fname, old, new)
    with pytest.raises(DatasetError) as exc:
        load_deepfashion_consumer2shop(root)
    text = str(exc.value)
    assert message in text
    assert "\n" not in text
    if "source type 2" in message:  # reported against the partition file, which defines the domain
        assert "list_eval_partition.txt:" in text
    else:
        assert f"{root / fname}:{line}: " in text


def test_deepfashion_missing_files(tmp_path):
    root = _df_copy(tmp_path)
    (root / "Anno" / "list_attr_items.txt").unlink()
    with pytest.raises(DatasetError, match="list_attr_items.txt: file not found"):
        load_deepfashion_consumer2shop(root)
    (root / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match="list_eval_partition.txt: file not found"):
        load_deepfashion_consumer2shop(root)
    with pytest.raises(DatasetError, match="not a directory"):
        load_deepfashion_consumer2shop(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ dispatch


def test_load_dataset_dispatch(tmp_path):
    assert load_dataset(CSV_TINY / "manifest.csv").records == load_csv_manifest(CSV_TINY / "manifest.csv").records
    assert len(load_dataset(CSV_TINY)) == 9  # directory holding manifest.csv
    assert load_dataset(DF_TINY).records == load_deepfashion_consumer2shop(DF_TINY).records
    with pytest.raises(DatasetError, match="neither manifest.csv nor Eval/list_eval_partition.txt"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file or directory"):
        load_dataset(tmp_path / "missing.csv")
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    with pytest.raises(DatasetError, match="not a .csv manifest"):
        load_dataset(txt)


def test_cli_reports_one_line_error(tmp_path, capsys):
    from snapshop_ml.data.loaders import main

    assert main([str(CSV_TINY / "manifest.csv")]) == 0
    assert '"products"' in capsys.readouterr().out
    p = _bad_csv(tmp_path, "images/a_shop.png,a,shop,dev,\n")
    assert main([str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_write_relative_record_paths_are_from_cwd(tmp_path, monkeypatch):
    """Records should hold absolute paths; a relative one is resolved against the cwd, not the CSV dir."""
    shutil.copytree(CSV_TINY / "images", tmp_path / "data" / "ds" / "images")
    monkeypatch.chdir(tmp_path)
    rec = ImageRecord(Path("data/ds/images/a_shop.png"), "a", "shop", "train", ("category:tshirt",))
    write_csv_manifest([rec], Path("data/ds/manifest.csv"))
    assert (tmp_path / "data/ds/manifest.csv").read_text().splitlines()[1].startswith("images/a_shop.png,")
    assert load_csv_manifest(tmp_path / "data/ds/manifest.csv").records[0].path == (tmp_path / "data/ds/images/a_shop.png").resolve()
