"""What `tinyvlm explain` writes: each word's map over the picture as a PNG overlay, a contact sheet
(a row per method, a column per word), an HTML page where hovering a word shows its map (with the
layer descriptions), and maps.json holding the words and their arrays. Every file is written
whole, then renamed into place."""
from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files import write_atomic
from .methods import Explanation

MAPS_JSON, PAGE, SHEET, OVERLAYS = "maps.json", "index.html", "contact_sheet.png", "overlays"
SHOW = 256  # the shortest side a picture is drawn at, so a 64-px picture's patches can be seen


def heat(m: np.ndarray) -> np.ndarray:
    """A map -> 0..1, its lowest finite value 0 and its highest 1 (NaN, outside the picture: 0).
    Each map is drawn on its own scale: the overlay shows where, not how much."""
    m = np.asarray(m, dtype=np.float64)
    finite = np.isfinite(m)
    if not finite.any():
        return np.zeros_like(m)
    lo, hi = m[finite].min(), m[finite].max()
    return np.where(finite, (m - lo) / (hi - lo) if hi > lo else 0.0, 0.0)


def overlay(picture: Image.Image, e: Explanation, m: np.ndarray) -> Image.Image:
    """The picture (enlarged to SHOW px, nearest) with a map laid on it in a black-red-yellow scale."""
    h = heat(e.in_picture(m))  # (height, width) of the original picture
    w0, h0 = picture.size
    scale = max(1, SHOW // min(w0, h0))
    base = np.asarray(picture.convert("RGB").resize((w0 * scale, h0 * scale), Image.NEAREST), dtype=np.float64)
    h = np.kron(h, np.ones((scale, scale)))[..., None]
    colour = np.concatenate([np.clip(3 * h, 0, 1), np.clip(3 * h - 1, 0, 1), np.clip(3 * h - 2, 0, 1)], -1) * 255
    out = 0.45 * base + 0.55 * colour
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24] or "word"


def write_page(out: str | Path, picture: Image.Image, explanations: list[Explanation],
               layers: list[dict] | None = None, image_name: str = "") -> dict[str, Path]:
    """Write the overlays, contact sheet, page and maps.json for one picture into `out`."""
    out = Path(out)
    (out / OVERLAYS).mkdir(parents=True, exist_ok=True)
    files: dict[str, list[list[str]]] = {}
    for e in explanations:
        names = []
        for k, w in enumerate(e.words):
            name = f"{OVERLAYS}/{e.method}{'' if e.layer is None else e.layer}_{k:02d}_{_slug(w.word)}.png"
            write_atomic(out / name, _png(overlay(picture, e, w.map)))
            names.append(name)
        files[e.method] = names
    paths = {"maps": out / MAPS_JSON, "page": out / PAGE, "sheet": out / SHEET}
    write_atomic(paths["sheet"], _png(contact_sheet(picture, explanations)))
    doc = {"image": image_name, "text": explanations[0].text if explanations else "",
           "methods": [e.to_dict() for e in explanations], "layers": layers or []}
    write_atomic(paths["maps"], json.dumps(doc, indent=1))
    write_atomic(paths["page"], page_html(picture, explanations, files, layers or [], image_name))
    return paths


def contact_sheet(picture: Image.Image, explanations: list[Explanation], cell: int = 128) -> Image.Image:
    """The text on top, then a row per method: the picture, then each word's overlay, the word above it."""
    import textwrap
    cols = 1 + max((len(e.words) for e in explanations), default=0)
    label = 14
    lines = textwrap.wrap(explanations[0].text if explanations else "", width=max(20, cols * cell // 7))
    top = 6 + label * len(lines)
    sheet = Image.new("RGB", (cols * cell, top + max(1, len(explanations)) * (cell + label)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    draw.multiline_text((2, 2), "\n".join(lines), fill="black", font=font, spacing=2)
    for r, e in enumerate(explanations):
        y = top + r * (cell + label)
        draw.text((2, y), e.method + ("" if e.layer is None else f" L{e.layer}"), fill="black", font=font)
        sheet.paste(picture.convert("RGB").resize((cell - 4, cell - 4), Image.NEAREST), (2, y + label))
        for c, w in enumerate(e.words, start=1):
            draw.text((c * cell + 2, y), w.word, fill="black", font=font)
            sheet.paste(overlay(picture, e, w.map).resize((cell - 4, cell - 4), Image.NEAREST), (c * cell + 2, y + label))
    return sheet


def page_html(picture: Image.Image, explanations: list[Explanation], files: dict, layers: list[dict],
              image_name: str) -> str:
    """One self-contained page (the overlays are files beside it): hover a word to see its map."""
    import base64
    src = "data:image/png;base64," + base64.b64encode(_png(picture.convert("RGB"))).decode()
    rows = []
    for e in explanations:
        by_start = {w.start: (w, name) for w, name in zip(e.words, files[e.method])}
        parts, i = [], 0
        for start in sorted(by_start):
            w, name = by_start[start]
            parts.append(html.escape(e.text[i:start]))
            parts.append(f'<span class="w" data-src="{html.escape(name)}" title="{html.escape(w.word)}: '
                         f'{float(np.nanmin(w.map)):.3g} .. {float(np.nanmax(w.map)):.3g}">'
                         f'{html.escape(e.text[start:w.end])}</span>')
            i = w.end
        parts.append(html.escape(e.text[i:]))
        layer = "" if e.layer is None else f" (encoder layer {e.layer})"
        rows.append(f'<tr><th>{e.method}{layer}</th><td>{"".join(parts)}<div class="u">{html.escape(e.units)}</div></td></tr>')
    layer_rows = []
    for d in layers:
        locs = "".join(f"<li>location {k}: {html.escape(t)}</li>" for k, t in d.get("locations", {}).items())
        layer_rows.append(f"<li><b>block {d['layer']}</b>, all locations pooled: {html.escape(d['pooled'])}"
                          f"{f'<ul>{locs}</ul>' if locs else ''}</li>")
    layer_html = (f"<h2>What each encoder layer sees (DeViL layer descriptions)</h2><ul>{''.join(layer_rows)}</ul>"
                  if layer_rows else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tinyvlm explain {html.escape(image_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}} img#view{{width:{SHOW}px;image-rendering:pixelated;
border:1px solid #999}} .w{{background:#fe9;cursor:pointer;padding:0 2px}} .w:hover{{background:#f80}}
td,th{{padding:.4em;vertical-align:top;text-align:left}} .u{{color:#666;font-size:80%}}</style></head>
<body><h1>Why the model said it</h1><p>{html.escape(image_name)}: hover a word to see its map over the picture.</p>
<img id="view" src="{src}" data-picture="{src}" alt="the picture">
<table>{''.join(rows)}</table>{layer_html}
<script>
const view = document.getElementById('view');
document.querySelectorAll('.w').forEach(s => {{
  s.addEventListener('mouseenter', () => {{ view.src = s.dataset.src; }});
  s.addEventListener('mouseleave', () => {{ view.src = view.dataset.picture; }});
}});
</script></body></html>
"""
