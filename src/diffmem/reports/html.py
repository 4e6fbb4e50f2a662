"""One self-contained HTML page from the saved results of a run folder (no network: CSS, JS and figures inline).

The page is a list of sections, one per result found under the folder. A section type is one registered function:

    @section("detect", "Detection", lambda d: (d / "scores.csv").exists())
    def _detect(folder: Path, page: Page) -> str: ...

``matches(folder)`` says whether a folder holds that result; ``render(folder, page)`` returns the section's HTML from
the saved files only (it never computes); ``tables`` (optional) returns per-row CSVs to write beside the results.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffmem.io import atomic_write_text
from diffmem.version import __version__

__all__ = ["SECTIONS", "Section", "section", "Page", "render_report", "write_report", "table", "figure",
           "provenance_block", "thumb", "data_uri", "export_figures",
           "finish_report"]

SKIP_DIRS = {"units", "pruned", "figures", "__pycache__"}  # caches and models, never results to show
MAX_DEPTH = 3


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    matches: Callable[[Path], bool]
    render: Callable[[Path, Page], str]
    tables: Callable[[Path], dict[str, list[dict]]] | None = None


SECTIONS: dict[str, Section] = {}


def section(name: str, title: str, matches: Callable[[Path], bool],
            tables: Callable[[Path], dict[str, list[dict]]] | None = None):
    """Register ``render(folder, page) -> html`` as the section of result type ``name``."""
    def register(render):
        SECTIONS[name] = Section(name, title, matches, render, tables)
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
    import os

    return os.path.relpath(path.resolve(), start.resolve())


# ---- pieces -------------------------------------------------------------------------------------------------------

def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(path: Path, caption: str = "") -> str:
    """A saved figure file embedded as a data URI, with its caption and a link to the file."""
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix.lower())
    if mime is None:
        return ""
    uri = data_uri(path.read_bytes(), mime)
    cap = html.escape(caption or path.stem.replace("_", " "))
    return (f'<figure><img src="{uri}" alt="{html.escape(path.name)}"><figcaption>{cap} '
            f'<span class="file">({html.escape(path.name)})</span></figcaption></figure>')


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
          sortable: bool = True) -> str:
    """An HTML table of ``rows``; a click on a header of a sortable table sorts by that column (numbers as numbers)."""
    if not rows:
        return f"<p class='empty'>{html.escape(caption)}: no rows.</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            text, key = (v, v.key) if isinstance(v, Raw) else _fmt(v)
            align = "" if _is_number(key) or (isinstance(v, Raw) and not key) else ' class="t"'
            cells.append(f'<td data-v="{html.escape(key)}"{align}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = ' class="sortable"' if sortable else ""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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


# ---- the page -----------------------------------------------------------------------------------------------------

def _folders(folder: Path, depth: int = 0) -> list[Path]:
    """``folder`` then its sub-folders depth first in name order (a result's parts stay together)."""
    subs = [d for d in sorted(folder.iterdir()) if d.is_dir() and d.name not in SKIP_DIRS
            and not d.name.startswith(".")] if depth < MAX_DEPTH else []
    return [folder, *(f for d in subs for f in _folders(d, depth + 1))]


def found(root: str | Path) -> list[tuple[Path, Section]]:
    """(folder, section) for every result under ``root``: the root's first, then the others in the order sections
    were registered (the story of a run: world, mechanism, theory, mitigation, detection), then by path."""
    root = Path(root)
    order = {name: i for i, name in enumerate(SECTIONS)}
    hits = [(f, s) for f in _folders(root) for s in SECTIONS.values() if s.matches(f)]
    return sorted(hits, key=lambda h: (h[0] != root, order[h[1].name], h[0].relative_to(root).parts))


def _anchor(root: Path, folder: Path, s: Section) -> str:
    rel = folder.relative_to(root).as_posix()
    return (s.name + ("-" + rel if rel != "." else "")).replace("/", "-").replace(".", "_")


def render_report(root: str | Path, page_dir: str | Path | None = None) -> str:
    """The HTML page of every saved result under ``root`` (links relative to ``page_dir``, default ``root``)."""
    from diffmem.reports import sections as _  # noqa: F401  (registers the built-in sections)

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; pass the run folder a diffmem job wrote")
    hits = found(root)
    if not hits:
        raise ValueError(f"{root} holds no saved result diffmem can report (no demo.json, summary.json, "
                         "kimresult.json … found); pass a run folder written by a diffmem job")
    page = Page(root, Path(page_dir or root))
    parts, toc = [], []
    for folder, s in hits:
        anchor = _anchor(root, folder, s)
        rel = folder.relative_to(root).as_posix()
        where = "" if rel == "." else f" <span class='where'>{html.escape(rel)}/</span>"
        body = s.render(folder, page)
        parts.append(f'<section id="{anchor}"><h2>{html.escape(s.title)}{where}</h2>{body}'
                     f"{files_block(folder, page)}</section>")
        toc.append(f'<li><a href="#{anchor}">{html.escape(s.title)}</a>{where}</li>')
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in page.notes)
    title = f"diffmem report: {root.resolve().name}"
    return _PAGE.format(title=html.escape(title), css=_CSS, js=_JS, version=__version__, toc="".join(toc),
                        body="".join(parts), notes=f"<ul class='notes'>{notes}</ul>" if notes else "")


def write_tables(root: str | Path) -> list[Path]:
    """Write the per-row CSVs each section derives from its saved results (e.g. Kim's per-prompt table)."""
    from diffmem.reports import sections as _  # noqa: F401
    from diffmem.reports.tables import write_csv

    paths = []
    for folder, s in found(root):
        for name, rows in (s.tables(folder) if s.tables else {}).items():
            paths.append(write_csv(folder / name, rows))
    return paths


def export_figures(root: str | Path, fmt: str, dpi: int = 200) -> list[Path]:
    """Re-draw the figures of every saved result that has plot functions (Kim F1–F6) as ``fmt`` files into that
    result's ``figures/`` folder, for a paper; returns their paths."""
    from diffmem.analyses.kim import KimResult
    from diffmem.reports.kim_figures import render_kim_figures

    return [p for folder, s in found(root) if s.name == "kim"
            for p in render_kim_figures(KimResult.load(folder), folder / "figures", fmt=fmt, dpi=dpi)]


def finish_report(root: str | Path) -> Path | None:
    """A job's last step: ``report.html`` in ``root``; None (the job still succeeds) when ``root`` holds nothing
    reportable or Pillow is missing."""
    try:
        return write_report(root)
    except ImportError:
        return None
    except ValueError as err:
        if "holds no saved result" in str(err):
            return None
        raise


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Write the per-row CSVs, then ``report.html`` (or ``out``) for the run folder ``root``; returns its path."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report.html"
    write_tables(root)
    return atomic_write_text(out, render_report(root, out.parent))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style></head>
<body><header><h1>{title}</h1><p>Rendered by diffmem {version} from the saved results only. Click a column header
to sort a table.</p><nav><ol>{toc}</ol></nav>{notes}</header>
<main>{body}</main>
<script>{js}</script></body></html>
"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:0 1.5em;
color:#1d1d1f;background:#fff}
h1{font-size:1.6em;margin:.8em 0 .2em}
h2{font-size:1.3em;border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.where{font-weight:normal;color:#777;font-size:.8em;font-family:ui-monospace,monospace}
nav ol{columns:2;margin:.3em 0}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:13px}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:middle}
th{background:#f3f3f5}.scroll th{position:sticky;top:0;z-index:1}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#aaa;font-size:.8em}
th.asc:after{content:" \\25B2";color:#333}th.desc:after{content:" \\25BC";color:#333}
td:first-child,th:first-child{text-align:left}
td.t{text-align:left;white-space:nowrap}td.t .text{display:inline-block;min-width:12em;white-space:normal}
tbody tr:nth-child(even){background:#fafafa}
.scroll{max-height:640px;overflow:auto;border:1px solid #eee;margin-bottom:1em}
.scroll table{margin:0}
figure{display:inline-block;margin:.5em 1em .8em 0;vertical-align:top;max-width:100%}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:.5em 1em}.figs figure{margin:0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#444;max-width:720px}
.file{color:#888;font-family:ui-monospace,monospace}
img.thumb{image-rendering:pixelated;margin:1px;vertical-align:middle;border:1px solid #ccc}
.prov dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:12px;margin:.4em 0}
.prov dt{font-weight:600}.prov dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.prov summary{cursor:pointer;font-weight:600}
.files{font-size:12px;color:#555}
.verdict-copy{color:#b00020;font-weight:600}.verdict-no{color:#1b5e20}
.legend{font-size:12px;color:#444}
.kv td:first-child{font-weight:600}
details.grids figure{max-width:30%}details.grids summary{cursor:pointer;font-weight:600;margin:.6em 0}
"""

_JS = """
(function(){
  function key(td){var v=td.getAttribute('data-v');if(v===null)v=td.textContent;
    var n=parseFloat(v);return (v!==''&&isFinite(n)&&String(n)!=='NaN'&&/^[-+0-9.eE]+$/.test(v))?n:v;}
  function cmp(a,b){if(a===''&&b==='')return 0;if(a==='')return 1;if(b==='')return -1;
    if(typeof a==='number'&&typeof b==='number')return a-b;return String(a).localeCompare(String(b));}
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('thead th').forEach(function(th,i){
      th.addEventListener('click',function(){
        var asc=!th.classList.contains('asc');
        t.querySelectorAll('thead th').forEach(function(h){h.classList.remove('asc','desc');});
        th.classList.add(asc?'asc':'desc');
        var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(r1,r2){var c=cmp(key(r1.cells[i]),key(r2.cells[i]));return asc?c:-c;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
})();
"""
