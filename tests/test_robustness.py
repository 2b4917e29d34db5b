"""Issue 21: the pictures, text files and folders users actually have give the right result or one
clear line, and nothing is lost. One test per case in tests/data/robustness/ (copied from
shared/cases/robustness, see its README) and one per other member of each class."""
import json
import os
import shutil
import stat
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinyvlm.cli import main
from tinyvlm.data import images as images_mod
from tinyvlm.data.dataset import open_records, write_shards
from tinyvlm.data.images import BACKGROUND, MAX_PIXELS, load_image, preprocess
from tinyvlm.data.importer import import_dataset
from tinyvlm.data.readers import ImportReport, read_csv, read_folder, read_jsonl, read_webdataset
from tinyvlm.data.records import Record, iter_jsonl, write_jsonl
from tinyvlm.data.textfiles import read_text
from tinyvlm.errors import TinyVLMError

CASES = Path(__file__).parent / "data" / "robustness"


def pixels(im) -> np.ndarray:
    return np.asarray(load_image(im)).astype(int)


def one_line_exit_2(capsys, argv) -> str:
    code = main(argv)
    err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("importing")]
    assert code == 2 and len(err) == 1, err
    return err[0]


def picture_folder(src: Path, n: int) -> Path:
    """A folder dataset: n different small pictures 0.png.. with captions 0.txt.."""
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(src / f"{i}.png")
        (src / f"{i}.txt").write_text(f"picture {i}\n")
    return src


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith((".import-", ".staged"))]


# --- class 1: pixel formats ----------------------------------------------------------------------
def test_case_rgba_and_its_flattened_twin_give_the_same_pixels():
    hidden, flat = CASES / "rgba_colours_under_transparent_pixels.png", CASES / "rgba_same_flattened_on_white.png"
    assert np.array_equal(pixels(hidden), pixels(flat))
    assert torch.equal(preprocess(hidden, 32), preprocess(flat, 32))


def _random_rgba(seed=0, size=(16, 12)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (*size[::-1], 4), dtype=np.uint8)
    a[..., 3] = rng.choice([0, 255, 128], size=size[::-1])
    return a


def _flatten(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """What compositing on BACKGROUND must give (to within rounding)."""
    a = alpha[..., None].astype(float) / 255
    return rgb.astype(float) * a + np.array(BACKGROUND) * (1 - a)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBa", "La", "PA"])
def test_every_alpha_mode_is_composited_on_the_background(mode):
    rgba = _random_rgba()
    im = Image.fromarray(rgba, "RGBA")
    if mode in ("LA", "La"):
        im = im.convert("LA")
    if mode == "PA":
        im = Image.merge("PA", (im.convert("RGB").convert("P").convert("L"), im.getchannel("A")))
    base = np.asarray(im.convert("RGBA"))  # the straight-alpha picture
    if mode in ("RGBa", "La"):
        im = im.convert(mode)
    got = pixels(im)
    expect = _flatten(base[..., :3], base[..., 3])
    assert np.abs(got - expect).max() <= 2
    clear = rgba[..., 3] == 0
    assert (got[clear] == BACKGROUND).all()  # nothing hidden under a transparent pixel survives


def test_palette_l_and_rgb_with_a_transparent_colour_are_composited():
    p = Image.new("P", (4, 4), 3)
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * 756)
    p.info["transparency"] = 3
    assert (pixels(p) == BACKGROUND).all()
    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    rgb.info["transparency"] = (10, 20, 30)
    assert (pixels(rgb) == BACKGROUND).all()
    grey = Image.new("L", (4, 4), 7)
    grey.info["transparency"] = 7
    assert (pixels(grey) == BACKGROUND).all()


def test_palette_png_with_transparency_read_from_disk(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[:4] = 1
    p = Image.fromarray(a, "P")
    p.putpalette([200, 0, 0, 0, 200, 0] + [0] * 762)
    p.save(tmp_path / "p.png", transparency=1)
    got = pixels(tmp_path / "p.png")
    assert (got[:4] == BACKGROUND).all() and (got[4:] == (200, 0, 0)).all()


def test_case_16_bit_ramp_keeps_its_ramp():
    src = np.asarray(Image.open(CASES / "grey16_ramp.png")).astype(float)
    got = pixels(CASES / "grey16_ramp.png")[..., 0]
    assert np.abs(got - src / 257).max() <= 0.5  # 0..65535 -> 0..255 exactly, no clipping
    assert len(np.unique(got)) == 256 and got.min() == 0 and got.max() == 255
    order = np.argsort(src.ravel(), kind="stable")
    assert (np.diff(got.ravel()[order]) >= 0).all()  # monotone: brighter stays brighter


def test_case_16_bit_photo_is_not_clipped_to_white():
    src = np.asarray(Image.open(CASES / "grey16_full_range.png")).astype(float)
    got = pixels(CASES / "grey16_full_range.png")
    assert np.array_equal(got[..., 0], np.rint(src / 257).astype(int))
    assert (got[..., 0] == got[..., 1]).all() and 20 < got.mean() < 235


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16_bit_in_either_byte_order_scales_the_same(dtype):
    a = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    im = Image.fromarray(a.astype(dtype)) if dtype == "<u2" else Image.frombytes("I;16B", (8, 8), a.astype(">u2").tobytes())
    assert np.array_equal(pixels(im)[..., 0], np.rint(a / 257).astype(int))


@pytest.mark.parametrize("values, mode, expect", [
    (np.arange(16).reshape(4, 4) * 4000, "I", np.rint(np.arange(16).reshape(4, 4) * 4000 / 257)),  # 16-bit data as I
    (np.arange(16).reshape(4, 4) * 10, "I", np.arange(16).reshape(4, 4) * 10),  # 8-bit data as I: unchanged
    (np.linspace(0, 1, 16).reshape(4, 4), "F", np.rint(np.linspace(0, 255, 16)).reshape(4, 4)),  # float 0..1
    (np.linspace(0, 200, 16).reshape(4, 4), "F", np.rint(np.linspace(0, 200, 16)).reshape(4, 4)),  # float 0..255
    (np.linspace(-1, 1, 16).reshape(4, 4), "F", np.rint(np.linspace(0, 255, 16)).reshape(4, 4)),  # own range
    (np.full((4, 4), 5e6), "F", np.zeros((4, 4))),  # constant outside every range: no division by zero
    (np.full((4, 4), 70000), "I", np.zeros((4, 4))),
    (np.full((4, 4), 40000), "I", np.full((4, 4), round(40000 / 257))),  # constant in range: its value
])
def test_32_bit_and_float_images_scale_by_their_true_range(values, mode, expect):
    im = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode)
    assert np.abs(pixels(im)[..., 0] - expect).max() <= 1


def test_float_image_with_nan_and_inf_gives_pixels_not_an_error():
    a = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    a[0, 0], a[0, 1], a[0, 2] = np.nan, np.inf, -np.inf
    got = pixels(Image.fromarray(a, "F"))[..., 0]
    assert got.min() >= 0 and got.max() <= 255 and got[3, 3] == 255


def test_bilevel_is_black_and_white():
    im = Image.fromarray(np.array([[0, 1], [1, 0]], bool))
    assert im.mode == "1" and pixels(im)[..., 0].tolist() == [[0, 255], [255, 0]]


def test_16_bit_with_a_transparent_value_is_composited(tmp_path):
    a = (np.arange(16, dtype=np.uint16) * 4000).reshape(4, 4)
    im = Image.fromarray(a)
    im.info["transparency"] = 0
    got = pixels(im)
    assert (got[0, 0] == BACKGROUND).all() and got[3, 3, 0] == round(60000 / 257)


def test_case_exif_orientation_applies_to_a_pil_image_as_to_a_path():
    upright = pixels(CASES / "exif_orientation_6_upright.jpg")
    given = Image.open(CASES / "exif_orientation_6.jpg")
    assert np.abs(pixels(given) - upright).mean() < 3  # JPEG re-encoding noise only
    assert np.array_equal(pixels(given), pixels(CASES / "exif_orientation_6.jpg"))
    assert np.abs(np.asarray(given.convert("RGB")).astype(int) - upright).mean() > 20  # it did need turning
    assert given.getexif().get(0x0112) == 6  # the caller's image is not changed


def test_exif_orientation_on_a_non_square_pil_image(tmp_path):
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 clockwise to view
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(Image.open(tmp_path / "r.jpg")).size == (10, 20) == load_image(tmp_path / "r.jpg").size


# --- class 2: image-library errors -----------------------------------------------------------------
def _png_declaring(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_case_decompression_bomb_is_one_clear_error():
    with pytest.raises(TinyVLMError, match=r"declares 400,000,000 pixels.*MAX_PIXELS"):
        load_image(CASES / "declares_20000x20000.png")


@pytest.mark.parametrize("w, h", [(12000, 12000), (MAX_PIXELS // 1000 + 1, 1000)])
def test_our_pixel_limit_holds_where_pil_only_warns(tmp_path, w, h):
    """144 MP is under PIL's error threshold (it only warns) but over MAX_PIXELS."""
    (tmp_path / "big.png").write_bytes(_png_declaring(w, h))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning escaping would fail the test
        with pytest.raises(TinyVLMError, match=f"declares {w}x{h}"):
            load_image(tmp_path / "big.png")


def test_pixel_limit_holds_even_when_pil_limit_is_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(TinyVLMError, match="MAX_PIXELS"):
        load_image(CASES / "declares_20000x20000.png")
    with pytest.raises(TinyVLMError, match="the given PIL image.*MAX_PIXELS"):
        load_image(Image.open(CASES / "declares_20000x20000.png"))  # a lazy PIL image, not decoded


def test_case_decompression_bomb_in_describe_is_one_line_exit_2(capsys, tmp_path):
    from tinyvlm.api import TinyVLM
    from tinyvlm.config import get_preset
    from tinyvlm.model import VisionLanguageModel
    from tinyvlm.tokenizer import Tokenizer
    tok = Tokenizer.train(["a red ball", "a blue cup"] * 10, 300)
    model = VisionLanguageModel(get_preset("nano", lm_vocab_size=64 * (tok.vocab_size // 64 + 1)))
    TinyVLM(model, tok).save_pretrained(tmp_path / "m")
    line = one_line_exit_2(capsys, ["describe", str(CASES / "declares_20000x20000.png"), "--model", str(tmp_path / "m")])
    assert "declares_20000x20000.png" in line and "MAX_PIXELS" in line


def test_case_decompression_bomb_in_import_is_skipped_and_named(tmp_path, capsys):
    src = picture_folder(tmp_path / "src", 1)
    shutil.copy(CASES / "declares_20000x20000.png", src / "bomb.png")
    (src / "bomb.txt").write_text("a bomb\n")
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "bomb.png" in err and "MAX_PIXELS" in err and "import.json" in err
    saved = json.loads((tmp_path / "out" / "import.json").read_text())
    assert saved["records"] == 1 and any("bomb.png" in p for p in saved["problems"])
    assert no_temp_files(tmp_path / "out")


@pytest.mark.parametrize("content", [
    b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a\x01\x00\x01\x00",
    b"BM" + b"\0" * 60, b"\xff\xd8\xff\xe0" + b"\0" * 30, b"II*\x00" + b"\xff" * 40,
])
def test_broken_files_are_one_error_naming_the_file(tmp_path, content):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(TinyVLMError, match="x.png"):
        preprocess(tmp_path / "x.png", 16)


def test_truncated_files_fail_on_decode_not_later(tmp_path):
    for ext in ("png", "jpeg", "gif", "bmp", "tiff", "webp"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(tmp_path / f"f.{ext}")
        data = (tmp_path / f"f.{ext}").read_bytes()
        (tmp_path / f"t.{ext}").write_bytes(data[:len(data) // 2])
        with pytest.raises(TinyVLMError, match=f"t.{ext}"):
            load_image(tmp_path / f"t.{ext}")
        try:
            lazy = Image.open(tmp_path / f"t.{ext}")  # a user's PIL image that was opened, not decoded
        except OSError:
            continue
        with pytest.raises(TinyVLMError, match="PIL image"):
            load_image(lazy)


def test_a_folder_named_like_an_image_is_one_error(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(TinyVLMError, match="dir.png"):
        load_image(tmp_path / "dir.png")


@pytest.mark.parametrize("exc", [OSError("bad"), SyntaxError("not a PSD"), ValueError("bad mode"),
                                 struct.error("unpack"), EOFError(), ZeroDivisionError("zero"), MemoryError(),
                                 IndexError("tile"), KeyError("tag"), TypeError("x"), Image.DecompressionBombError("x"),
                                 Image.DecompressionBombWarning("x"), RuntimeError("decoder")])
def test_every_exception_pil_raises_becomes_one_tinyvlm_error(tmp_path, monkeypatch, exc):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")

    def fail(*a, **k):
        raise exc
    for where in ("open", "load"):  # on open, and on decode (load/convert)
        monkeypatch.undo()
        if where == "open":
            monkeypatch.setattr(images_mod.Image, "open", fail)
        else:
            monkeypatch.setattr(images_mod, "to_rgb", fail)
        with pytest.raises(TinyVLMError, match="ok.png") as e:
            load_image(tmp_path / "ok.png")
        assert "\n" not in str(e.value)


# --- class 4: text encodings -----------------------------------------------------------------------
def test_case_cp1252_csv_with_crlf_imports_and_warns(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(CASES / "import_cp1252_csv", src)
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    err = capsys.readouterr().err
    assert "captions.csv:2" in err and "Windows-1252" in err
    texts = {r.text for r in open_records(tmp_path / "out", "train")}
    assert texts == {"A café on the street", "Two dogs"}
    assert no_temp_files(tmp_path / "out") and no_temp_files(src)


def _csv_dataset(tmp_path, raw: bytes) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "c.csv").write_bytes(raw)
    return tmp_path / "c.csv"


@pytest.mark.parametrize("raw", [
    "\ufeffimage,caption\na.png,Ein Café\n".encode("utf-8"),          # UTF-8 with BOM
    "image,caption\r\na.png,Ein Café\r\n".encode("utf-8"),             # CRLF
    "image,caption\ra.png,Ein Café\r".encode("utf-8"),                 # lone CR (old Mac)
    "image,caption\na.png,Ein Café\n".encode("cp1252"),                # Windows-1252
])
def test_csv_in_any_common_encoding_and_line_ends(tmp_path, raw):
    report = ImportReport()
    recs = list(read_csv(_csv_dataset(tmp_path, raw), report=report))
    assert [r.text for r in recs] == ["Ein Café"] and not report.problems


def test_bytes_that_are_neither_utf8_nor_cp1252_name_file_and_line(tmp_path, capsys):
    csv_path = _csv_dataset(tmp_path, b"image,caption\na.png,ok\na.png,bad \x81 byte\n")
    with pytest.raises(TinyVLMError, match=r"c.csv:3: byte 0x81"):
        list(read_csv(csv_path, report=ImportReport()))
    line = one_line_exit_2(capsys, ["data", "import", str(csv_path), "--out", str(tmp_path / "out")])
    assert "c.csv:3" in line
    assert no_temp_files(tmp_path)


def test_jsonl_with_bom_crlf_and_a_cp1252_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    raw = (b"\xef\xbb\xbf" + json.dumps({"image": "a.png", "text": "first"}).encode() + b"\r\n"
           + json.dumps({"image": "a.png", "text": "na\u00efve"}, ensure_ascii=False).encode("cp1252") + b"\r\n")
    (tmp_path / "d.jsonl").write_bytes(raw)
    report = ImportReport()
    assert [r.text for r in read_jsonl(tmp_path / "d.jsonl", report=report)] == ["first", "na\u00efve"]
    assert not report.problems and "d.jsonl:2" in report.warnings[0]
    with pytest.warns(UserWarning, match="d.jsonl:2"):
        assert len(list(iter_jsonl(tmp_path / "d.jsonl"))) == 2  # training's reader too


def test_deeply_nested_jsonl_line_is_a_bad_line_not_a_crash(tmp_path):
    (tmp_path / "d.jsonl").write_text("[" * 100000 + "\n")
    errors = []
    assert list(iter_jsonl(tmp_path / "d.jsonl", errors)) == [] and "d.jsonl:1" in errors[0]


def test_folder_captions_with_bom_crlf_cp1252_and_upper_case_txt(tmp_path):
    for name in "abcd":
        Image.new("RGB", (8, 8), (ord(name), 0, 0)).save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_bytes("\ufeffone\r\ntwo\r\n".encode("utf-8"))
    (tmp_path / "b.txt").write_bytes("café\n".encode("cp1252"))
    (tmp_path / "c.TXT").write_text("upper case\n")
    (tmp_path / "d.txt").write_bytes(b"\x81\x8d\n")  # neither encoding: that picture is skipped, named
    report = ImportReport()
    recs = {Path(r.images[0]).name: r.references for r in read_folder(tmp_path, report=report)}
    assert recs == {"a.png": ["one", "two"], "b.png": ["café"], "c.png": ["upper case"]}
    assert len(report.problems) == 1 and "d.png" in report.problems[0] and "d.txt:1" in report.problems[0]


def test_webdataset_caption_in_cp1252(tmp_path):
    import io
    import tarfile
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in (("k.png", buf.getvalue()), ("k.txt", "une forêt".encode("cp1252"))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = ImportReport()
    recs = list(read_webdataset(tmp_path / "s.tar", report=report, extract_dir=tmp_path / "x"))
    assert [r.text for r in recs] == ["une forêt"] and report.warnings


def test_read_text_rules(tmp_path):
    (tmp_path / "t").write_bytes(b"\xef\xbb\xbfa\r\nb\rc\nd")
    assert read_text(tmp_path / "t") == "a\nb\nc\nd\n"
    with pytest.raises(TinyVLMError, match="cannot read"):
        read_text(tmp_path / "missing")


def test_failing_import_leaves_no_temp_files(tmp_path, monkeypatch):
    src = picture_folder(tmp_path / "src", 3)
    import tinyvlm.data.importer as importer

    def explode(*a, **k):
        raise MemoryError("boom")
    monkeypatch.setattr(importer, "write_shards", explode)
    with pytest.raises(MemoryError):
        import_dataset(src, "folder", tmp_path / "out", progress=False)
    assert no_temp_files(tmp_path / "out") and not list((tmp_path / "out").glob(".import-*"))


def test_write_jsonl_leaves_no_tmp_when_records_fail(tmp_path):
    def records():
        yield Record(images=["a.png"], text="ok")
        raise TinyVLMError("a record failed")
    with pytest.raises(TinyVLMError):
        write_jsonl(records(), tmp_path / "x.jsonl")
    assert list(tmp_path.iterdir()) == []


# --- class 5: silent mismatches in import ----------------------------------------------------------
def test_case_same_stem_pictures_are_reported_by_name(tmp_path, capsys):
    assert main(["data", "import", str(CASES / "import_folder_same_stem"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "a.png" in err and "a.jpg" in err and "import.json" in err
    saved = json.loads((tmp_path / "out" / "import.json").read_text())
    assert saved["records"] == 2 and saved["skipped"] == 1 and "a.png" in saved["problems"][0]


def test_same_stem_without_a_caption_file_reports_both(tmp_path):
    for ext in ("jpg", "png"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"a.{ext}")
    report = ImportReport()
    assert list(read_folder(tmp_path, report=report)) == []
    assert len(report.problems) == 2 and all(any(n in p for p in report.problems) for n in ("a.jpg", "a.png"))


def test_console_summary_names_the_first_skipped_and_points_at_import_json(tmp_path, capsys):
    src = picture_folder(tmp_path / "src", 1)
    for i in range(8):
        (src / f"broken{i}.png").write_bytes(b"nope")
        (src / f"broken{i}.txt").write_text("x\n")
    import_dataset(src, "folder", tmp_path / "out")
    err = capsys.readouterr().err
    assert "skipped: 8" in err and "broken0.png" in err and "broken4.png" in err and "broken7.png" not in err
    assert "and 3 more" in err and str(tmp_path / "out" / "import.json") in err


# --- class 7: no data loss ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm():
    from tinyvlm.api import TinyVLM
    from tinyvlm.config import get_preset
    from tinyvlm.model import VisionLanguageModel
    from tinyvlm.tokenizer import Tokenizer
    tok = Tokenizer.train(["a red ball", "a blue cup"] * 10, 300)
    return TinyVLM(VisionLanguageModel(get_preset("nano", lm_vocab_size=64 * (tok.vocab_size // 64 + 1))), tok)


def test_save_pretrained_into_a_project_folder_refuses_and_deletes_nothing(tmp_path, vlm):
    proj = tmp_path / "project"
    (proj / ".git").mkdir(parents=True)
    (proj / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (proj / "notes.txt").write_text("my notes\n")
    with pytest.raises(TinyVLMError, match=r"\.git/.*notes\.txt") as e:
        vlm.save_pretrained(proj)
    assert "\n" not in str(e.value)
    assert (proj / "notes.txt").read_text() == "my notes\n" and (proj / ".git" / "HEAD").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no .tmp / .old left


def test_save_pretrained_over_a_foreign_config_json_refuses(tmp_path, vlm):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"editor": "vscode"}')
    with pytest.raises(TinyVLMError, match="config.json"):
        vlm.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").read_text() == '{"editor": "vscode"}'


def test_save_pretrained_replaces_its_own_model_and_fills_an_empty_folder(tmp_path, vlm):
    (tmp_path / "m").mkdir()
    vlm.save_pretrained(tmp_path / "m")
    vlm.save_pretrained(tmp_path / "m", extra_files={"README.md": b"card"})
    vlm.save_pretrained(tmp_path / "m", extra_files={"README.md": b"card 2"})  # its own extra file too
    assert (tmp_path / "m" / "README.md").read_bytes() == b"card 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_leftover_sibling_holding_user_files_is_not_deleted(tmp_path, vlm):
    (tmp_path / "m.tmp").mkdir()
    (tmp_path / "m.tmp" / "mine.txt").write_text("keep")
    with pytest.raises(TinyVLMError, match="mine.txt"):
        vlm.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m.tmp" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_saved_files_get_normal_permissions(tmp_path, vlm, mask):
    old = os.umask(mask)
    try:
        vlm.save_pretrained(tmp_path / "m")
        import_dataset(picture_folder(tmp_path / "src", 1), "folder", tmp_path / "out", val_fraction=0, progress=False)
    finally:
        os.umask(old)
    files = [*(tmp_path / "m").iterdir(), tmp_path / "out" / "import.json", *(tmp_path / "out" / "train").iterdir(),
             *(tmp_path / "out" / "images").iterdir()]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: oct(0o666 & ~mask) for f in files}
    assert oct(stat.S_IMODE((tmp_path / "m").stat().st_mode)) == oct(0o777 & ~mask)


def test_write_shards_refuses_a_folder_with_user_files_and_keeps_old_shards_on_failure(tmp_path):
    recs = [Record(images=[str(tmp_path / "a.png")], text=f"t{i}") for i in range(3)]
    write_shards(recs, tmp_path, "train", shard_size=2)
    before = sorted((tmp_path / "train").iterdir())

    def failing():
        yield recs[0]
        raise TinyVLMError("broken halfway")
    with pytest.raises(TinyVLMError):
        write_shards(failing(), tmp_path, "train")
    assert sorted((tmp_path / "train").iterdir()) == before and not (tmp_path / "train.tmp").exists()
    (tmp_path / "train" / "my_notes.md").write_text("mine")
    with pytest.raises(TinyVLMError, match="my_notes.md"):
        write_shards(recs, tmp_path, "train")
    assert (tmp_path / "train" / "my_notes.md").exists() and sorted((tmp_path / "train").glob("shard-*")) == before[1:]


def test_reimport_without_val_removes_only_old_val_shards(tmp_path):
    src = picture_folder(tmp_path / "src", 4)
    out = tmp_path / "out"
    import_dataset(src, "folder", out, val_fraction=0.5, progress=False)
    (out / "val" / "keep.txt").write_text("mine")
    import_dataset(src, "folder", out, val_fraction=0, progress=False)
    assert sorted(p.name for p in (out / "val").iterdir()) == ["keep.txt"]
    assert len(open_records(out, "train")) == 4


def test_run_files_match_what_training_writes():
    import tinyvlm.train as train
    from tinyvlm.checkpoint import RUN_FILES
    for name in ("STATE", "OPTIMIZER", "CONCEPT_WEIGHTS"):
        if hasattr(train, name):
            assert getattr(train, name) in RUN_FILES


def test_training_into_a_checkpoint_folder_holding_user_files_refuses(tmp_path):
    from conftest import make_shapes_dataset
    from tinyvlm.train import TrainConfig, train
    data = make_shapes_dataset(tmp_path / "shapes", n=8)
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "paper.tex").write_text("mine")
    with pytest.raises(TinyVLMError, match="paper.tex"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "run"), preset="nano", steps=2, batch_size=4,
                          vocab_size=300, progress=False))
    assert (tmp_path / "run" / "checkpoint" / "paper.tex").read_text() == "mine"
