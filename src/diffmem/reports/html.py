"""One self-contained HTML page from the saved results of a run folder (no network: CSS, JS and figures inline).

The page is a list of sections, one per result found under the folder; the section types are registered in
:mod:`diffmem.reports.sections` (adding one is one function, see :mod:`diffmem.reports.parts`).
"""

from __future__ import annotations

import html
from pathlib import Path

from diffmem.analyses.kim import KimResult
from diffmem.io import atomic_write_bytes, atomic_write_text
from diffmem.reports import kim_theory_section as _kim_theory_section  # noqa: F401  (registers its section)
from diffmem.reports import retrigger_section as _retrigger_section  # noqa: F401  (registers its section)
from diffmem.reports import sections as _sections  # noqa: F401  (registers the built-in sections)
from diffmem.reports.kim_figures import FORMATS, render_kim_figures
from diffmem.reports.parts import MAX_DEPTH, SECTIONS, SKIP_DIRS, Page, Section, figure_bytes, files_block
from diffmem.reports.tables import write_csv
from diffmem.version import __version__

__all__ = ["render_report", "write_report", "finish_report", "export_figures", "write_tables", "found"]

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
    paths = []
    for folder, s in found(root):
        for name, rows in (s.tables(folder) if s.tables else {}).items():
            paths.append(write_csv(folder / name, rows))
    return paths


def export_figures(root: str | Path, fmt: str, dpi: int = 200) -> list[Path]:
    """Re-draw the figures of every saved result that has plot functions (Kim F1–F6, the mitigation Pareto front,
    the detection ROC curves) as ``fmt`` files into that result's ``figures/`` folder, for a paper; returns their
    paths."""
    if fmt not in FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {FORMATS}")
    import matplotlib

    matplotlib.use("Agg")
    paths = []
    for folder, s in found(root):
        if s.name == "kim":
            paths += render_kim_figures(KimResult.load(folder), folder / "figures", fmt=fmt, dpi=dpi)
        for name, draw in (s.figures(folder) if s.figures else {}).items():
            paths.append(atomic_write_bytes(folder / "figures" / f"{name}.{fmt}", figure_bytes(draw(), fmt, dpi)))
    return paths


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
table{border-collapse:collapse;margin:.2em 0 1em;font-size:13px;display:block;max-width:100%;overflow-x:auto}
caption,p.caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}p.caption{margin:.6em 0 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:middle}td{white-space:nowrap}
th{background:#f3f3f5}.scroll th{position:sticky;top:0;z-index:1}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#aaa;font-size:.8em}
th.asc:after{content:" \\25B2";color:#333}th.desc:after{content:" \\25BC";color:#333}
td:first-child,th:first-child{text-align:left}
td.t,th.t{text-align:left}td.t{white-space:nowrap}td.t .text{display:inline-block;min-width:12em;white-space:normal}
tbody tr:nth-child(even){background:#fafafa}
.scroll{max-height:640px;overflow:auto;border:1px solid #eee;margin-bottom:1em}
.scroll table{margin:0;display:table;overflow:visible}
figure{display:inline-block;margin:.5em 1em .8em 0;vertical-align:top;max-width:100%}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:.5em 1em}
.figs figure{margin:0}.figs figure.wide{grid-column:1/-1}figure.wide figcaption{max-width:none}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#444;max-width:720px}
.file{color:#888;font-family:ui-monospace,monospace}
img.thumb{image-rendering:pixelated;margin:1px;vertical-align:middle;border:1px solid #ccc}
.prov dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:12px;margin:.4em 0}
.prov dt{font-weight:600}.prov dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.prov summary{cursor:pointer;font-weight:600}
.files{font-size:12px;color:#555}
.verdict-copy{color:#b00020;font-weight:600}.verdict-no{color:#1b5e20}.verdict-unjudged{color:#777}
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
