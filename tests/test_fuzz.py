"""Fuzz the image path and the readers with hypothesis: whatever bytes or lines come in, no exception
other than TinyVLMError escapes. Seeded (derandomize) so CI sees the same examples every run; each
test prints how many examples it ran (pytest -s shows them)."""
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyvlm.data import images as images_mod
from tinyvlm.data.images import preprocess
from tinyvlm.data.importer import import_dataset
from tinyvlm.data.readers import ImportReport, read_csv, read_jsonl
from tinyvlm.errors import TinyVLMError


def fuzz(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _seed_files() -> list[tuple[str, bytes]]:
    """Valid small pictures in many formats and modes: mutating them reaches deep into decoders."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (6, 5, 4), np.uint8), "RGBA")
    out = []
    for fmt, ext, im in [("PNG", ".png", rgba), ("PNG", ".png", rgba.convert("P")), ("PNG", ".png", rgba.convert("LA")),
                         ("PNG", ".png", Image.fromarray(rng.integers(0, 65535, (6, 5), np.uint16))),
                         ("JPEG", ".jpg", rgba.convert("RGB")), ("JPEG", ".jpg", rgba.convert("CMYK")),
                         ("GIF", ".png", rgba.convert("P")), ("BMP", ".jpg", rgba.convert("RGB")),
                         ("TIFF", ".png", rgba.convert("RGB")), ("WEBP", ".jpg", rgba)]:
        buf = io.BytesIO()
        im.save(buf, fmt)
        out.append((ext, buf.getvalue()))
    return out


SEEDS = _seed_files()
mutations = st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6)


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """Random bytes named .png/.jpg, or a valid file with bytes overwritten and maybe cut short."""
    if draw(st.booleans()):
        return draw(st.sampled_from([".png", ".jpg"])), draw(st.binary(max_size=300))
    ext, data = draw(st.sampled_from(SEEDS))
    data = bytearray(data)
    for pos, value in draw(mutations):
        data[pos % len(data)] = value
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return ext, bytes(data[:cut])


def test_random_files_through_preprocess_raise_only_tinyvlm_errors(monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 1 << 20)  # keep mutated headers from allocating gigabytes
    ran, refused = [], []
    with tempfile.TemporaryDirectory() as d:
        @fuzz(250)
        @given(image_files())
        def check(file):
            ext, data = file
            path = Path(d) / f"x{ext}"
            path.write_bytes(data)
            ran.append(1)
            try:
                assert preprocess(path, 16).shape == (3, 16, 16)
            except TinyVLMError as e:
                assert str(e) and "\n" not in str(e)
                refused.append(1)
        check()
    print(f"fuzz: {len(ran)} image files through preprocess ({len(refused)} refused with TinyVLMError)")
    assert len(ran) >= 250 and 0 < len(refused) < len(ran)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
                               st.sampled_from(["image", "images", "text", "prompt", "turns", "references",
                                                "role", "content", "answer", "x"]), kids, max_size=4),
                           max_leaves=8)
jsonl_lines = st.one_of(json_values.map(json.dumps), st.text(max_size=40),
                        st.binary(max_size=40).map(lambda b: b.decode("latin-1")))


def test_random_jsonl_lines_raise_only_tinyvlm_errors():
    ran = []
    with tempfile.TemporaryDirectory() as d:
        Image.new("RGB", (4, 4)).save(Path(d) / "a.png")

        @fuzz(150)
        @given(st.lists(jsonl_lines, max_size=5), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
        def check(lines, end, bom):
            raw = (b"\xef\xbb\xbf" if bom else b"") + end.join(l.encode("utf-8", "surrogatepass") for l in lines)
            path = Path(d) / "d.jsonl"
            path.write_bytes(raw)
            ran.append(1)
            report = ImportReport()
            try:
                for r in read_jsonl(path, report=report):
                    assert r.text.strip() and r.images
            except TinyVLMError:
                pass
        check()
    print(f"fuzz: {len(ran)} JSONL files through the JSONL reader")
    assert len(ran) >= 150


csv_cells = st.one_of(st.sampled_from(["a.png", "b.png", "", "missing.png", "a caption", '"quoted, comma"']),
                      st.text(max_size=12))


def test_random_csv_rows_raise_only_tinyvlm_errors():
    ran = []
    with tempfile.TemporaryDirectory() as d:
        Image.new("RGB", (4, 4)).save(Path(d) / "a.png")

        @fuzz(150)
        @given(st.lists(st.lists(csv_cells, min_size=0, max_size=4), max_size=6),
               st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1"]), st.sampled_from(["\n", "\r\n"]))
        def check(rows, encoding, end):
            text = end.join(["image,caption", *(",".join(r) for r in rows)]) + end
            path = Path(d) / "c.csv"
            path.write_bytes(text.encode(encoding, errors="replace"))
            ran.append(1)
            try:
                list(read_csv(path, report=ImportReport()))
            except TinyVLMError:
                pass
        check()
    print(f"fuzz: {len(ran)} CSV files through the CSV reader")
    assert len(ran) >= 150


def test_importer_on_a_tiny_random_folder_raises_only_tinyvlm_errors(monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 1 << 20)
    ran = []

    @fuzz(40)
    @given(st.lists(st.tuples(image_files(), st.binary(max_size=30)), min_size=1, max_size=3))
    def check(items):
        ran.append(1)
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "src"
            src.mkdir()
            for i, ((ext, data), caption) in enumerate(items):
                (src / f"{i}{ext}").write_bytes(data)
                (src / f"{i}.txt").write_bytes(caption)
            try:
                import_dataset(src, "folder", Path(d) / "out", progress=False)
            except TinyVLMError:
                pass
            leftovers = [p.name for p in (Path(d) / "out").rglob("*") if ".tmp" in p.name or p.name.startswith(".import")]
            assert not leftovers
    check()
    print(f"fuzz: {len(ran)} random folders through data import")
    assert len(ran) >= 40
