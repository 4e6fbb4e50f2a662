"""Pieces of the HTML report: the section registry, tables, figures, thumbnails and provenance blocks.

A section type is one registered function (e.g. a mitigation run)::

    @section("detect", "Detection", lambda d: (d / "scores.csv").exists())
    def _detect(folder: Path, page: Page) -> str: ...

``matches(folder)`` says whether a folder holds that result; ``render(folder, page)`` returns the section's HTML from
the saved files only (it never computes); ``tables`` (optional) returns per-row CSVs to write beside the results;
``figures`` (optional) returns ``{name: draw}``, each ``draw()`` a matplotlib figure drawn from the saved results —
embedded by the section with :func:`drawn` and exported by ``diffmem report --format``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffmem.version import __version__

__all__ = ["SECTIONS", "Section", "section", "Page", "Raw", "table", "figure", "provenance_block", "thumb", "data_uri",
           "files_block", "SKIP_DIRS", "MAX_DEPTH", "drawn", "figure_bytes"]

SKIP_DIRS = {"units", "pruned", "figures", "__pycache__"}  # caches and models, never results to show
MAX_DEPTH = 3


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    matches: Callable[[Path], bool]
    render: Callable[[Path, Page], str]
    tables: Callable[[Path], dict[str, list[dict]]] | None = None
    figures: Callable[[Path], dict[str, Callable]] | None = None


SECTIONS: dict[str, Section] = {}


def section(name: str, title: str, matches: Callable[[Path], bool],
            tables: Callable[[Path], dict[str, list[dict]]] | None = None,
            figures: Callable[[Path], dict[str, Callable]] | None = None):
    """Register ``render(folder, page) -> html`` as the section of result type ``name``."""
    def register(render):
        SECTIONS[name] = Section(name, title, matches, render, tables, figures)
        return render
    return register


@dataclass
class Page:
    """What sections share while one page is rendered: the run root (links are relative to the page)."""

    root: Path
    page_dir: Path
    notes: list[str] = field(default_factory=list)

    def link(self, path: Path) -> str:
        rel = Path(_relpath(path, self.page_dir))
        return f'<a href="{html.escape(rel.as_posix())}">{html.escape(path.name)}</a>'


def _relpath(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


# ---- pieces -------------------------------------------------------------------------------------------------------

def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(path: Path, caption: str = "") -> str:
    """A saved figure file embedded as a data URI, with its caption and a link to the file."""
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix.lower())
    if mime is None:
        return ""
    data = path.read_bytes()
    uri = data_uri(data, mime)
    cap = html.escape(caption or path.stem.replace("_", " "))
    return (f'<figure{_wide(data)}><img src="{uri}" alt="{html.escape(path.name)}"><figcaption>{cap} '
            f'<span class="file">({html.escape(path.name)})</span></figcaption></figure>')


def _wide(png: bytes) -> str:
    """' class="wide"' for a PNG much wider than tall (panels side by side): it takes a whole row of a figure grid,
    where half a row would shrink its text below reading size."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return ""
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    return ' class="wide"' if h and w / h > 1.7 else ""


def figure_bytes(fig, fmt: str = "png", dpi: int = 110) -> bytes:
    """A matplotlib figure as the bytes of a ``fmt`` file (tight bounding box); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def drawn(draw: Callable, name: str, caption: str = "") -> str:
    """A figure drawn now from saved results (``draw()`` returns a matplotlib figure), embedded as a PNG; nothing when
    matplotlib is missing (the tables still carry the numbers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return f"<p class='empty'>{html.escape(name)}: matplotlib is not installed (pip install matplotlib).</p>"
    png = figure_bytes(draw())
    uri = data_uri(png, "image/png")
    return (f'<figure{_wide(png)}><img src="{uri}" alt="{html.escape(name)}"><figcaption>{html.escape(caption)} '
            f'<span class="file">(diffmem report --format svg|pdf writes figures/{html.escape(name)}.*)</span>'
            "</figcaption></figure>")


def thumb(img, *, size: int = 48, border: str | None = None, title: str = "") -> str:
    """A [C, H, W] image in [-1, 1] (tensor or array) as an inline PNG; ``border`` colours its frame (e.g. a copy)."""
    from PIL import Image

    x = np.asarray(img.detach().float().cpu() if hasattr(img, "detach") else img, dtype=np.float32)
    x = np.nan_to_num((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    x = x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(x).resize((size, size * x.shape[0] // x.shape[1]), Image.NEAREST).save(buf, format="PNG")
    style = f' style="outline:3px solid {border}"' if border else ""
    return f'<img class="thumb" src="{data_uri(buf.getvalue(), "image/png")}" title="{html.escape(title)}"{style}>'


def _fmt(v) -> tuple[str, str]:
    """(shown text, sort key) of a cell value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–", ""
    if isinstance(v, bool):
        return ("yes" if v else "no"), str(int(v))
    if isinstance(v, int):
        return str(v), str(v)
    if isinstance(v, float):
        return (f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"), repr(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v):
        return f"[{v[0]:.3g}, {v[1]:.3g}]", repr(float(v[0]))
    if isinstance(v, (list, tuple, dict)):
        return html.escape(json.dumps(v)), json.dumps(v)
    return html.escape(str(v)), str(v)


def _is_number(key: str) -> bool:
    try:
        float(key)
    except ValueError:
        return key == ""
    return True


class Raw(str):
    """Cell content that is already HTML (thumbnails); sorts by ``key``."""

    key = ""

    def __new__(cls, text: str, key: str = ""):
        obj = super().__new__(cls, text)
        obj.key = key
        return obj


def table(rows: Sequence[dict], columns: Sequence[str] | None = None, *, caption: str = "",
          sortable: bool = True, scroll: bool = False) -> str:
    """An HTML table of ``rows``; a click on a header of a sortable table sorts by that column (numbers as numbers).
    ``scroll``: inside a box that scrolls both ways under sticky headers."""
    if not rows:
        return f"<p class='empty'>{html.escape(caption)}: no rows.</p>"
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))  # every key, in first-seen order
    body, text_cols = [], set()
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            text, key = (v, v.key) if isinstance(v, Raw) else _fmt(v)
            align = "" if _is_number(key) or (isinstance(v, Raw) and not key) else ' class="t"'
            text_cols.update([c] if align else [])
            cells.append(f'<td data-v="{html.escape(key)}"{align}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(('<th class="t">' if c in text_cols else "<th>") + f"{html.escape(c)}</th>" for c in columns)
    cls = ' class="sortable"' if sortable else ""
    # the caption sits above the table, as wide as the page: inside a narrow table it would wrap word by word, inside
    # a wide one it would scroll off
    cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    inner = f'<table{cls}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return cap + (f'<div class="scroll">{inner}</div>' if scroll else inner)


def provenance_block(prov: dict | None, **more) -> str:
    """Model, sampler, seeds, guidance, similarity and package version of a result, as a definition list."""
    prov = dict(prov or {})
    sub = prov.pop("subject", None)
    if isinstance(sub, dict):  # a detection run describes its subject: model and sampler inside
        prov.setdefault("model", sub.get("model"))
        prov.setdefault("solver", {k: sub[k] for k in ("solver", "steps", "x_T_scale") if k in sub})
        more = {"subject": sub.get("subject"), **more}
    main = ("model", "solver", "grid", "guidance")
    items = {**{k: prov.get(k) for k in main if prov.get(k)}, **more}
    seeds = prov.get("seeds")
    if seeds:
        items["seeds"] = f"{len(seeds)} seeds, {seeds[0]}…{seeds[-1]}" if len(seeds) > 6 else seeds
    extra = prov.get("extra") or {}
    for k in ("similarity", "preprocess", "severity", "copy_rule"):
        if k in extra:
            items[k] = extra[k]
    if prov.get("interventions"):
        items["interventions"] = prov["interventions"]
    items.update({k: v for k, v in prov.items() if k not in (*main, "seeds", "extra", "interventions", "package")})
    items["package"] = f"diffmem {prov['package']}" if prov.get("package") else f"diffmem {__version__} (this page)"
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{_short(v)}</dd>" for k, v in items.items() if v not in (None, {}))
    return f'<details class="prov" open><summary>Provenance</summary><dl>{rows}</dl></details>'


def _short(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return html.escape(text if len(text) <= 400 else text[:400] + " …")


def files_block(folder: Path, page: Page) -> str:
    """Links to the data files beside the results (CSV, JSON, JSONL, figure files)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".csv", ".json", ".jsonl", ".pdf",
                                                                              ".svg", ".png", ".md"))
    return "<p class='files'>Files: " + ", ".join(page.link(p) for p in files) + "</p>" if files else ""
