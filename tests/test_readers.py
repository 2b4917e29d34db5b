"""Readers and importer on tiny files made here: every broken entry is reported by name and skipped,
everything else is kept (exact counts)."""
import csv
import io
import json
import tarfile
from itertools import islice
from pathlib import Path

import pytest
from PIL import Image

from tinyvlm.data.dataset import open_records
from tinyvlm.data.importer import import_dataset
from tinyvlm.data.readers import (ImportReport, guess_format, read_any, read_coco, read_csv,
                                  read_folder, read_jsonl, read_webdataset)
from tinyvlm.errors import TinyVLMError

FLICKR = Path(__file__).parents[1] / ".." / "shared" / "data" / "flickr8k"


def make_image(path: Path, shade: int, fmt: str = "PNG") -> Path:
    """A tiny image whose bytes differ by `shade`, so each is a distinct picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 255 - shade, 40)).save(path, fmt)
    return path


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return path


def mentions(report: ImportReport, *names: str) -> None:
    for name in names:
        assert any(name in p for p in report.problems), f"{name} not in {report.problems}"


def test_read_csv_groups_by_image_and_skips_bad_rows(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        make_image(tmp_path / "images" / name, 40 * i)
    src = write_csv(tmp_path / "captions.csv", [
        ("a.png", "a dog"), ("b.png", ""), ("a.png", "a brown dog"), ("b.png", "a cat"),
        ("missing.png", "a ghost"), ("c.png", "a bird")])
    report = ImportReport()
    records = list(read_csv(src, report=report))
    assert [Path(r.images[0]).name for r in records] == ["a.png", "b.png", "c.png"]
    assert records[0].text == "a dog" and records[0].references == ["a dog", "a brown dog"]
    assert records[1].references == ["a cat"]
    assert report.skipped == 2
    mentions(report, "captions.csv:3", "missing.png")


def test_read_coco(tmp_path):
    make_image(tmp_path / "images" / "a.png", 0)
    make_image(tmp_path / "images" / "b.png", 90)
    make_image(tmp_path / "images" / "c.png", 180)
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"},
                       {"id": 3, "file_name": "missing.png"}, {"id": 4, "file_name": "c.png"}],
            "annotations": [{"id": 10, "image_id": 1, "caption": "one"}, {"id": 11, "image_id": 1, "caption": "uno"},
                            {"id": 12, "image_id": 2, "caption": "  "}, {"id": 13, "image_id": 2, "caption": "two"},
                            {"id": 14, "image_id": 3, "caption": "three"}]}
    src = tmp_path / "captions.json"
    src.write_text(json.dumps(coco))
    report = ImportReport()
    records = list(read_coco(src, tmp_path / "images", report=report))
    assert [(r.text, r.references) for r in records] == [("one", ["one", "uno"]), ("two", ["two"])]
    assert report.skipped == 3  # empty caption 12, missing image, c.png without captions
    mentions(report, "annotation 12", "missing.png", "c.png")


def test_read_jsonl(tmp_path):
    make_image(tmp_path / "a.png", 0)
    src = tmp_path / "data.jsonl"
    src.write_text("\n".join([
        json.dumps({"image": "a.png", "text": "a square"}),
        "{not json",
        json.dumps({"image": "gone.png", "text": "nothing"}),
        json.dumps({"image": "a.png", "text": ""}),
    ]) + "\n")
    report = ImportReport()
    records = list(read_jsonl(src, report=report))
    assert len(records) == 1 and records[0].text == "a square"
    assert report.skipped == 3
    mentions(report, "data.jsonl:2", "gone.png", "data.jsonl:4")


def test_read_folder(tmp_path):
    make_image(tmp_path / "a.png", 0)
    (tmp_path / "a.txt").write_text("first caption\n\nsecond caption\n")
    make_image(tmp_path / "sub" / "b.jpg", 50, "JPEG")
    (tmp_path / "sub" / "b.txt").write_text("in a subfolder")
    make_image(tmp_path / "no_caption.png", 100)
    make_image(tmp_path / "empty.png", 150)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "orphan.txt").write_text("no image for me")
    report = ImportReport()
    records = list(read_folder(tmp_path, report=report))
    assert [r.references for r in records] == [["first caption", "second caption"], ["in a subfolder"]]
    assert report.skipped == 3
    mentions(report, "no_caption.png", "empty.png", "orphan.txt")


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_webdataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    png = make_image(folder / "tmp.png", 10).read_bytes()
    png2 = make_image(folder / "tmp.png", 200).read_bytes()
    (folder / "tmp.png").unlink()
    with tarfile.open(folder / "shard-000000.tar", "w") as tar:
        add_member(tar, "s1.png", png), add_member(tar, "s1.txt", b"first sample")
        add_member(tar, "s2.png", png2), add_member(tar, "s2.json", b'{"caption": "second sample"}')
        add_member(tar, "s3.png", png)  # no caption
        add_member(tar, "s4.txt", b"no image")
        add_member(tar, "s5.png", png), add_member(tar, "s5.json", b"{broken")
        add_member(tar, "s6.png", png), add_member(tar, "s6.txt", b"   ")
        add_member(tar, "s7.jpg", b"not really a jpeg"), add_member(tar, "s7.txt", b"corrupt image")
    return folder


def test_read_webdataset(tmp_path):
    shards = make_webdataset(tmp_path / "wds")
    report = ImportReport()
    records = list(read_webdataset(shards, report=report, extract_dir=tmp_path / "x"))
    assert [r.text for r in records] == ["first sample", "second sample", "corrupt image"]
    assert all(Path(r.images[0]).parent == tmp_path / "x" for r in records)
    assert report.skipped == 4
    mentions(report, ":s3", ":s4", ":s5", ":s6")
    # brace notation finds the same shard
    again = list(read_webdataset(str(shards / "shard-{000000..000001}.tar"), report=ImportReport(),
                                 extract_dir=tmp_path / "y"))
    assert len(again) == 3


def test_read_any_guesses_and_rejects_unknown(tmp_path):
    assert guess_format("x/captions.csv") == "csv"
    assert guess_format("x/data.jsonl") == "jsonl"
    assert guess_format("x/captions_train2017.json") == "coco"
    assert guess_format("x/data-{000..009}.tar") == "webdataset"
    assert guess_format(make_webdataset(tmp_path / "wds")) == "webdataset"
    make_image(tmp_path / "f" / "a.png", 0)
    assert guess_format(tmp_path / "f") == "folder"
    with pytest.raises(TinyVLMError, match="coco, csv, jsonl, folder, webdataset"):
        read_any(tmp_path, "parquet", ImportReport())


def make_jsonl_dataset(folder: Path, n: int = 20) -> Path:
    """n distinct images with one caption each, plus the traps an importer must handle."""
    lines = []
    for i in range(n):
        make_image(folder / f"img{i}.png", 10 * i)
        lines.append({"image": f"img{i}.png", "text": f"picture {i}"})
    (folder / "copy_of_img0.png").write_bytes((folder / "img0.png").read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG this is not an image")
    lines += [{"image": "img0.png", "text": "picture 0"},           # exact duplicate
              {"image": "copy_of_img0.png", "text": "picture 0"},   # same bytes, other name, same text
              {"image": "copy_of_img0.png", "text": "another caption of picture 0"},  # kept, shares image
              {"image": "corrupt.png", "text": "broken"}]           # skipped, named
    src = folder / "data.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return src


def test_import_validates_dedupes_and_splits_by_image(tmp_path):
    src = make_jsonl_dataset(tmp_path / "src")
    out = tmp_path / "out"
    report = import_dataset(src, "jsonl", out, val_fraction=0.25, seed=3, shard_size=4, progress=False)
    assert (report.images, report.records, report.duplicates, report.skipped) == (20, 21, 2, 1)
    mentions(report, "corrupt.png")
    assert report.train + report.val == 21 and report.val >= 5
    assert report.summary() == ("images: 20, captions: 21, skipped: 1, duplicates: 2, "
                                f"train: {report.train}, val: {report.val}")
    assert len(list((out / "images").iterdir())) == 20
    train, val = open_records(out, "train"), open_records(out, "val")
    assert (len(train), len(val)) == (report.train, report.val)
    train_images = {r.images[0] for r in train.epoch(0, seed=1)}
    val_images = {r.images[0] for r in val}
    assert not train_images & val_images
    assert all(Path(p).is_file() for p in train_images | val_images)
    saved = json.loads((out / "import.json").read_text())
    assert saved["duplicates"] == 2 and len(saved["problems"]) == 1
    assert not (out / "_extract").exists() and not list(out.glob("*.tmp"))


def test_import_split_is_seeded(tmp_path):
    src = make_jsonl_dataset(tmp_path / "src")

    def val_images(out, seed):
        import_dataset(src, "auto", tmp_path / out, val_fraction=0.3, seed=seed, progress=False)
        return sorted(Path(r.images[0]).name for r in open_records(tmp_path / out, "val"))

    assert val_images("a", 0) == val_images("b", 0)
    assert val_images("c", 1) != val_images("a", 0)


def test_import_webdataset_end_to_end(tmp_path):
    report = import_dataset(make_webdataset(tmp_path / "wds"), "webdataset", tmp_path / "out",
                            val_fraction=0.5, progress=False)
    assert (report.records, report.skipped, report.train, report.val) == (2, 5, 1, 1)
    mentions(report, "s7")  # the corrupt image is named by its sample
    assert not (tmp_path / "out" / "_extract").exists()


def test_import_empty_input_fails_clearly(tmp_path):
    src = write_csv(tmp_path / "captions.csv", [("missing.png", "nothing here")])
    with pytest.raises(TinyVLMError, match="no usable records"):
        import_dataset(src, "csv", tmp_path / "out", progress=False)


def test_flickr8k_first_50_images(tmp_path):
    if not (FLICKR / "captions.csv").is_file():
        pytest.skip(f"Flickr8k not found at {FLICKR.resolve()}")
    report = ImportReport()
    records = list(islice(read_any(FLICKR, "auto", report), 50))
    assert len(records) == 50 and all(len(r.references) == 5 for r in records)
    names = {Path(r.images[0]).name for r in records}
    with open(FLICKR / "captions.csv", encoding="utf-8", newline="") as f:
        rows = [(row["image"], row["caption"]) for row in csv.DictReader(f) if row["image"] in names]
    small = write_csv(tmp_path / "captions.csv", rows)
    out = tmp_path / "out"
    report = import_dataset(small, "csv", out, image_dir=FLICKR / "images", progress=False)
    assert (report.images, report.captions, report.skipped) == (50, 250, 0)
    assert (report.train, report.val) == (45, 5)
    assert len(open_records(out, "val").head(5)) == 5
