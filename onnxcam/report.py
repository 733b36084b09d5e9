"""report.html: a run (or maps made in Python) as one page people would rather look at than read.

The page has a header (model and its SHA-256, task, layers with their module paths, preprocessing, where the class
names came from, methods with their options, time per method, counts), a colour bar, filters (text over file and
class names, a check box per method, "warnings only"), one section per image (the input, then one column per method
(per method and layer with --per-layer) and one row per target: class, region or detection; each overlay captioned
with the target's name, probability and score, a badge on flat maps) and the failures in a section of their own,
capped with a count of the rest.

Scale: the image sections are not HTML but data (JSON in the page) that a small script turns into one page of
sections at a time, so a run of 20,000 images opens and filters as quickly as one of ten (benchmarks/report.py
measures it). The pictures are files beside the page: small JPEG previews in `report_files/` (the full overlay
PNG opens on click), so the page stays a few hundred bytes per record.

Safety: every text is escaped: HTML text by html.escape, the data as JSON with <, > and & written as \\u escapes
(so no string can close the script element); the script only sets textContent and attributes, and image paths are
URL-encoded per segment and must stay inside the output folder. A Content-Security-Policy lets only this page's
own script run (by its hash) and loads nothing from the network.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREVIEWS = "report_files"       # folder of JPEG previews beside report.html
PREVIEW_SIDE = 320              # longest side of an overlay's preview (shown at 200 CSS px: sharp on 1.5x screens)
INPUT_PREVIEW_SIDE = 640        # the input's preview is also what opens when it is clicked
RECORD_LIMIT = 200_000          # records embedded in the page (~100 bytes each); results.jsonl always has them all
FAILURE_LIMIT = 500             # failure cards shown; the rest are counted
VALUE_NAMES = {"classify": "logit", "segment": "region score", "detect": "score", "embed": "similarity"}

Record = dict[str, Any]


def preview_path(overlay: str) -> str:
    """Where an overlay's preview goes, relative to the output folder (report_files/<overlay stem>.jpg)."""
    stem = overlay[:-4] if overlay.endswith(".png") else overlay
    return f"{PREVIEWS}/{stem}.jpg"


def input_preview_path(name: str) -> str:
    """Where an input's preview goes ('.input' cannot end a method's stem, so the names never collide)."""
    return f"{PREVIEWS}/{name}.input.jpg"


# --- records -> the page's data ---------------------------------------------------------------------------------
@dataclass
class Gallery:
    """What the page shows, grouped: image sections (compact rows for the script), failures and counts."""

    methods: list[str] = field(default_factory=list)       # the columns: a method, or a method at one layer
    method_names: list[str] = field(default_factory=list)  # the methods themselves (per-layer runs: fewer)
    images: list[list[Any]] = field(default_factory=list)
    failures: list[Record] = field(default_factory=list)
    failed: int = 0            # images that failed (all of them, shown or not)
    records: int = 0           # records seen
    shown: int = 0             # records embedded
    flat: int = 0              # flat maps among the embedded records
    task: str | None = None


def gather(records: Iterable[Record], record_limit: int = RECORD_LIMIT,
           failure_limit: int = FAILURE_LIMIT) -> Gallery:
    """Group records (in input order; one image's records are consecutive) into image sections.

    An image row is [shown path, name, input preview, predicted text, kept from an earlier run, rows]; a row is
    [target text, probability, score, cells]; a cell is [method index, overlay path, flat, seconds]. Records that
    are not mappings, or whose overlay is not a plain path inside the output folder, are left out.
    """
    gallery = Gallery()
    method_index: dict[str, int] = {}
    current: list[Any] | None = None
    current_key: Any = None
    row_index: dict[Any, list[Any]] = {}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        gallery.records += 1
        if rec.get("status") == "failed":
            gallery.failed += 1
            if len(gallery.failures) < failure_limit:
                gallery.failures.append(rec)
            continue
        overlay = (rec.get("paths") or {}).get("overlay") if isinstance(rec.get("paths"), dict) else None
        if not isinstance(overlay, str) or not plain_relative(overlay) or gallery.shown >= record_limit:
            continue
        gallery.shown += 1
        gallery.task = gallery.task or _text(rec.get("task")) or None
        method = _column(rec)
        if method not in method_index:
            method_index[method] = len(gallery.methods)
            gallery.methods.append(method)
            if _text(rec.get("method")) not in gallery.method_names:
                gallery.method_names.append(_text(rec.get("method")))
        key = (rec.get("image"), rec.get("name"))
        if current is None or key != current_key:
            name = _text(rec.get("name") or rec.get("image"))
            current = [_text(rec.get("image") or name), name,
                       input_preview_path(name) if plain_relative(name) else "", _predicted(rec),
                       int(rec.get("status") == "skipped"), []]
            gallery.images.append(current)
            current_key, row_index = key, {}
        target_key = (_text(rec.get("target")), _text(rec.get("target_kind")), _text(rec.get("box")))
        row = row_index.get(target_key)
        if row is None:
            row = [_target_text(rec), _number(rec.get("probability")), _number(rec.get("target_score")), []]
            row_index[target_key] = row
            current[5].append(row)
        flat = bool(rec.get("flat"))
        gallery.flat += flat
        row[3].append([method_index[method], overlay, int(flat), _number(rec.get("seconds"))])
    return gallery


def _column(rec: Record) -> str:
    """The column of a record: its method, and for one map per layer (--per-layer) the layer's short name."""
    method = _text(rec.get("method"))
    if rec.get("layer_index") is None:
        return method
    return f"{method} @ {_text(rec.get('layer_label') or rec.get('layer_module') or rec.get('layer'))}"


def plain_relative(path: str) -> bool:
    """A plain relative path that stays inside the folder it is read from (no '..', not absolute, no NUL)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return bool(parts) and ".." not in parts and not os.path.isabs(path) and "\x00" not in path and \
        not path.startswith(("/", "\\")) and ":" not in parts[0]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _predicted(rec: Record) -> str:
    predicted = rec.get("predicted")
    if predicted is None:
        return ""
    name = rec.get("predicted_label") or f"class {predicted}"
    score = _number(rec.get("score"))
    return f"predicted {name}" + ("" if score is None else f" (logit {score:.4g})")


def _target_text(rec: Record) -> str:
    """The target's name: its class name (or index), what it covers for regions, its index for detections."""
    target, label, kind = rec.get("target"), rec.get("label"), _text(rec.get("target_kind"))
    name = _text(label) if label else "" if target is None else f"class {target}"
    if kind.startswith("detection"):
        index = kind.split()[1] if len(kind.split()) > 1 else "?"
        return f"{name} (detection {index})" if name else kind
    if kind.startswith("class ") and " over " in kind:  # a segmentation region: "class 4 over 310 pixels"
        return f"{name} over {kind.split(' over ', 1)[1]}"
    return name or kind or "target"


# --- the page ---------------------------------------------------------------------------------------------------
@dataclass
class Header:
    """The run header: title, (name, value) rows, time per method and the colour map of the overlays."""

    title: str = "onnxcam report"
    rows: list[tuple[str, str]] = field(default_factory=list)
    method_seconds: dict[str, float] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    colormap: str = "jet"
    task: str | None = None
    notes: list[str] = field(default_factory=list)     # e.g. records left out of the page


def header_from_manifest(manifest: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> Header:
    """The header rows of a job's run.json (every field optional: an old or hand-made manifest still works)."""
    m = manifest or {}
    head = Header()
    model = _text(m.get("model"))
    if model:
        head.title = f"onnxcam: {Path(model).name}"
        head.rows.append(("model", model))
    if m.get("model_sha256"):
        head.rows.append(("SHA-256", _text(m["model_sha256"])))
    targets = _dict(m, "targets")
    head.task = _text(targets.get("task")) or None
    if targets:
        head.rows.append(("task", _targets_text(targets)))
    layers, modules = _list(m, "layers"), _list(m, "layer_modules")
    if layers:
        head.rows.append(("layer", "; ".join(_text(layer) + (f" (module {modules[i]})" if i < len(modules) and
                                                             modules[i] else "") for i, layer in enumerate(layers))))
    if m.get("per_layer"):
        head.rows.append(("maps", "one per layer (--per-layer), not averaged"))
    steps = m.get("preprocessing_text")  # the job's own one-line summary (source and steps)
    if isinstance(m.get("preprocessing"), dict):
        tensor = preprocessing_text(m["preprocessing"])
        head.rows.append(("preprocessing", f"{steps} ({tensor})" if isinstance(steps, str) else tensor))
    elif isinstance(steps, str):
        head.rows.append(("preprocessing", steps))
    if m.get("label_source") or m.get("labels") is not None:
        head.rows.append(("class names", _text(m.get("label_source") or f"{m.get('labels')} names")))
    options = _dict(m, "method_options")
    head.method_options = {k: v for k, v in options.items() if isinstance(v, dict)}
    explainer = _dict(m, "explainer")
    chosen = {k: v for k, v in explainer.items() if v not in (None, False) and not (k == "extra_tokens_at" and
                                                                                    v == "start")}
    if m.get("device"):
        chosen = {"device": m["device"], **chosen}
    if chosen:
        head.rows.append(("explainer", ", ".join(f"{k} {_text(v)}" for k, v in chosen.items())))
    head.colormap = _text(m.get("colormap")) or "jet"
    if m.get("alpha") is not None:
        head.rows.append(("overlay", f"{head.colormap}, alpha {_text(m.get('alpha'))}"))
    if m.get("onnxcam"):
        head.rows.append(("onnxcam", _text(m["onnxcam"])))
    for key, value in (extra or {}).items():
        head.rows.append((str(key), _text(value)))
    return head


def _dict(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def _list(mapping: dict[str, Any], key: str) -> list[Any]:
    value = mapping.get(key)
    return value if isinstance(value, list) else []


def _targets_text(targets: dict[str, Any]) -> str:
    task = _text(targets.get("task")) or "classify"
    parts = [task]
    if targets.get("top_k"):
        parts.append(f"top {targets['top_k']} classes")
    elif targets.get("category") is not None:
        parts.append(f"class {targets['category']}")
    elif task in ("classify", "segment"):
        parts.append("predicted class")
    if targets.get("threshold") is not None:
        parts.append(f"detections scoring >= {targets['threshold']} (at most {targets.get('max_detections')})")
    if targets.get("box") is not None:
        parts.append(f"detection {targets['box']}")
    if targets.get("mask"):
        parts.append("given mask")
    if targets.get("reference"):
        parts.append("similarity to a reference image")
    return ", ".join(parts)


def preprocessing_text(spec: dict[str, Any]) -> str:
    """One line: '224x224 NCHW RGB float32, x * 0.003922, mean (0.485, 0.456, 0.406), std (...)'."""
    size = spec.get("size") or []
    out = "x".join(str(v) for v in size) if size else "?"
    out += f" {spec.get('layout', '')} {spec.get('channel_order', '')} {spec.get('dtype', '')}".rstrip()
    if spec.get("scale") is not None:
        out += f", x * {float(spec['scale']):.6g}"

    def values(key: str) -> str:
        return "(" + ", ".join(f"{float(v):.4g}" for v in spec.get(key) or []) + ")"
    if spec.get("mean") is not None:
        out += f", mean {values('mean')}"
    if spec.get("std") is not None:
        out += f", std {values('std')}"
    return " ".join(out.split())


def page(gallery: Gallery, header: Header, counts: dict[str, Any] | None = None) -> str:
    """The whole report page (HTML text)."""
    from onnxcam.render import COLORMAPS, colormap_stops

    counts = counts or {}
    data = {"methods": gallery.methods, "value": VALUE_NAMES.get(header.task or gallery.task or "classify", "score"),
            "images": gallery.images}
    script = _SCRIPT
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    policy = (f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
              f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")
    stops = colormap_stops(header.colormap if header.colormap in COLORMAPS else "jet")
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_e(policy)}\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{_e(header.title)}</title><style>{_STYLE}</style></head><body>",
        "<header class=\"top\"><h1>", _e(header.title), "</h1>",
        "<button id=\"theme\" type=\"button\" title=\"light / dark / follow the system\">theme: auto</button>",
        "</header>",
        _header_html(header, gallery, counts),
        "<div class=\"colourbar\"><span>0</span><div class=\"bar\" style=\"background:linear-gradient(to right,",
        ",".join(stops), ")\"></div><span>1</span><span class=\"k\">map value (per image min-max: 1 = the ",
        "strongest evidence for the target)</span></div>",
        "<div class=\"controls\" id=\"controls\"><input id=\"filter\" type=\"search\" placeholder=\"filter: file or ",
        "class name (all words must match)\" aria-label=\"filter by file or class name\">",
        "<span id=\"methods\" class=\"methods\"></span>",
        "<label><input type=\"checkbox\" id=\"warned\"> warnings only</label>",
        "<span id=\"count\" class=\"k\"></span></div>",
        "<nav class=\"pager\" id=\"pager-top\"></nav><main id=\"gallery\"></main><nav class=\"pager\" ",
        "id=\"pager-bottom\"></nav>",
        "<noscript><p>The image sections need JavaScript; results.jsonl lists every record.</p></noscript>",
        _failures_html(gallery),
        "<dialog id=\"zoom\"><figure><img id=\"zoom-img\" alt=\"\"><figcaption id=\"zoom-cap\"></figcaption>",
        "</figure><p class=\"k\">Esc or click to close; the arrow keys step through this page.</p></dialog>",
        "<script type=\"application/json\" id=\"data\">", _json(data), "</script>",
        f"<script>{script}</script></body></html>\n",
    ]
    return "".join(parts)


def _header_html(header: Header, gallery: Gallery, counts: dict[str, Any]) -> str:
    rows = list(header.rows)
    summary = [f"{counts[k]} {'image' if k == 'images' and counts[k] == 1 else k}"
               for k in ("images", "done", "failed", "skipped") if counts.get(k) is not None]
    if summary:
        rows.insert(0, ("run", ", ".join(summary) + (f" in {counts['seconds']:.1f} s" if counts.get("seconds")
                                                      else "")))
    if gallery.flat:
        rows.append(("warnings", f"{gallery.flat} flat map(s): the method found no evidence for the target there "
                                 "(a constant map: all-zero gradients or scores, or NaN/Inf replaced by zeros); tick "
                                 "'warnings only' to see them"))
    if gallery.shown < gallery.records - gallery.failed:
        rows.append(("shown", f"{gallery.shown + len(gallery.failures)} of {gallery.records} records (all in "
                              "results.jsonl)"))
    rows += [("note", note) for note in header.notes]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f"<dl class=\"meta\">{items}</dl>{_methods_table(header, gallery, counts)}"


def _methods_table(header: Header, gallery: Gallery, counts: dict[str, Any]) -> str:
    methods = gallery.method_names or list(header.method_options) or list(header.method_seconds)
    if not methods:
        return ""
    images = max(1, int(counts.get("done") or 0) or len(gallery.images))
    body = []
    for m in methods:
        seconds = header.method_seconds.get(m)
        options = header.method_options.get(m) or {}
        time_text = "" if seconds is None else f"{seconds:.2f} s"
        each = "" if seconds is None else f"{1000 * seconds / images:.1f} ms"
        body.append(f"<tr><td>{_e(m)}</td><td>{_e(', '.join(f'{k}={v}' for k, v in options.items()) or '-')}</td>"
                    f"<td class=\"n\">{_e(time_text)}</td><td class=\"n\">{_e(each)}</td></tr>")
    return ("<table class=\"times\"><thead><tr><th>method</th><th>options</th><th>compute time</th>"
            "<th>per image</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>")


def _failures_html(gallery: Gallery) -> str:
    if not gallery.failed:
        return ""
    cards = "".join(f"<div class=\"card failed\"><div class=\"name\">{_e(rec.get('image'))}</div>"
                    f"<div class=\"err\">{_e(rec.get('error'))}</div></div>" for rec in gallery.failures)
    more = gallery.failed - len(gallery.failures)
    tail = f"<p class=\"k\">{len(gallery.failures)} of {gallery.failed} shown; the other {more} are in " \
           "results.jsonl</p>" if more > 0 else ""
    return (f"<section id=\"failures\"><h2>Failures ({gallery.failed})</h2><div class=\"fails\">{cards}</div>"
            f"{tail}</section>")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _json(data: Any) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' (so no '</script>' or '<!--'), ASCII only."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def read_data(report: str | os.PathLike) -> dict[str, Any]:
    """The data embedded in a report page (methods, value name, image rows; see `gather`), e.g. for tests."""
    text = Path(report).read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="data">') + len('<script type="application/json" '
                                                                           'id="data">')
    return json.loads(text[start:text.index("</script>", start)])


def read_records(path: str | os.PathLike) -> Iterator[Record]:
    """Records from a results.jsonl, one at a time (a cut last line or a non-JSON line is skipped)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def render_report(records: Iterable[Record], header: Header, counts: dict[str, Any] | None = None,
                  record_limit: int = RECORD_LIMIT, failure_limit: int = FAILURE_LIMIT) -> str:
    """records -> the page (HTML text); the header says what they were made from."""
    return page(gather(records, record_limit, failure_limit), header, counts)


# --- the page's style and script ----------------------------------------------------------------------------------
_STYLE = """
:root{color-scheme:light dark;--bg:#f6f7f9;--fg:#1d2330;--muted:#5d6677;--card:#fff;--line:#d9dde5;--accent:#2457c5;
--warn:#a15c00;--warnbg:#fff1d6;--bad:#b3261e;--badbg:#fdecea;--w:200px}
html[data-theme=dark]{--bg:#14171c;--fg:#e6e9ef;--muted:#9aa3b2;--card:#1d2128;--line:#343a45;--accent:#8fb3ff;
--warn:#ffc46b;--warnbg:#3a2c12;--bad:#ff8a80;--badbg:#3b1d1b}
@media (prefers-color-scheme:dark){html:not([data-theme=light]){--bg:#14171c;--fg:#e6e9ef;--muted:#9aa3b2;
--card:#1d2128;--line:#343a45;--accent:#8fb3ff;--warn:#ffc46b;--warnbg:#3a2c12;--bad:#ff8a80;--badbg:#3b1d1b}}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:1em 1.5em;background:var(--bg);
color:var(--fg)}
h1{font-size:1.35em;margin:0}h2{font-size:1em;margin:0 0 .5em;font-weight:600}
.top{display:flex;justify-content:space-between;align-items:center;gap:1em}
button,select,input{font:inherit;color:inherit;background:var(--card);border:1px solid var(--line);border-radius:4px;
padding:.2em .5em}
.meta{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.15em 1em;margin:.8em 0;max-width:100%}
.meta dt{color:var(--muted)}.meta dd{margin:0;overflow-wrap:anywhere}
.times{border-collapse:collapse;margin:.4em 0 .8em}.times td,.times th{border-bottom:1px solid var(--line);
padding:.15em .8em .15em 0;text-align:left;overflow-wrap:anywhere}.times .n{text-align:right}
.colourbar{display:flex;align-items:center;gap:.5em;margin:.4em 0}.bar{width:240px;height:12px;border-radius:2px;
border:1px solid var(--line)}
.controls{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:.6em 1em;align-items:center;
padding:.5em 0;background:var(--bg);border-bottom:1px solid var(--line)}
#filter{flex:1 1 20em;min-width:12em}.methods label{margin-right:.6em;white-space:nowrap}
.k{color:var(--muted)}
.pager{display:flex;gap:.5em;align-items:center;margin:.6em 0}
#gallery{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:.8em 0}
section.img{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.7em;flex:0 1 auto;
max-width:100%;overflow-x:auto}
section.img h2{max-width:calc(var(--w) * 2 + 8px);min-width:100%;width:0}
section.img h2 .name{overflow-wrap:anywhere}section.img h2 .pred{display:block;color:var(--muted);font-weight:400}
.grid{display:grid;gap:8px;align-items:start}
.head{font-weight:600;color:var(--muted);overflow-wrap:anywhere}
figure{margin:0;width:var(--w)}figure img{width:var(--w);height:auto;display:block;border-radius:3px;cursor:zoom-in;
background:var(--line)}
figcaption{font-size:.85em;overflow-wrap:anywhere;margin-top:2px}
.badge{display:inline-block;font-size:.8em;padding:0 .4em;border-radius:3px;margin-left:.3em}
.badge.warn{color:var(--warn);background:var(--warnbg)}.badge.kept{color:var(--muted);border:1px solid var(--line)}
#failures{margin-top:1.5em}.fails{display:flex;flex-wrap:wrap;gap:8px}
.card.failed{background:var(--badbg);border:1px solid var(--bad);border-radius:6px;padding:.5em;width:320px}
.card .name{font-weight:600;overflow-wrap:anywhere}.err{color:var(--bad);overflow-wrap:anywhere}
dialog{max-width:96vw;max-height:96vh;border:1px solid var(--line);background:var(--card);color:var(--fg);padding:.6em}
dialog img{max-width:92vw;max-height:84vh;display:block;margin:auto;cursor:zoom-out}
dialog::backdrop{background:rgba(0,0,0,.7)}
"""

# Builds one page of sections from the data. Text goes in through textContent only; paths through encodeURI per
# segment. window.reportReady (ms since navigation) lets benchmarks/report.py and the tests see it has rendered.
_SCRIPT = r"""
(function(){"use strict";
var D=JSON.parse(document.getElementById("data").textContent),M=D.methods,I=D.images;
var hay=I.map(function(im){return (im[0]+" "+im[1]+" "+im[3]+" "+im[5].map(function(r){return r[0];}).join(" "))
  .toLowerCase();});
var warned=I.map(function(im){return im[5].some(function(r){return r[3].some(function(c){return c[2];});});});
var S={page:0,size:20,on:M.map(function(){return true;}),shown:I.map(function(_,i){return i;})};
var sizes=[10,20,50,100];
function el(t,c,x){var e=document.createElement(t);if(c)e.className=c;if(x!=null)e.textContent=x;return e;}
function url(p){return p.split("/").map(encodeURIComponent).join("/");}
function num(v){return v==null?"n/a":(Math.abs(v)>=1000||Math.abs(v)<0.001&&v!==0?v.toExponential(2):
  String(Number(v.toPrecision(3))));}
function caption(r){var t=r[0];if(r[1]!=null)t+=" \u00b7 p "+r[1].toFixed(3);if(r[2]!=null)t+=" \u00b7 "+D.value+
  " "+num(r[2]);return t;}
var zoom=document.getElementById("zoom"),zimg=document.getElementById("zoom-img"),
  zcap=document.getElementById("zoom-cap"),figs=[],at=-1;
function open(k){if(k<0||k>=figs.length)return;at=k;var f=figs[k];zimg.src=f.full;zimg.alt=f.text;
  zcap.textContent=f.text;if(!zoom.open)zoom.showModal();}
zoom.addEventListener("click",function(){zoom.close();});
document.addEventListener("keydown",function(e){if(!zoom.open)return;if(e.key==="ArrowRight")open(at+1);
  if(e.key==="ArrowLeft")open(at-1);});
function picture(src,full,text,fallback){var f=el("figure"),img=el("img");img.loading="lazy";img.decoding="async";
  img.alt=text;img.src=url(src);img.addEventListener("error",function(){if(fallback&&!img.dataset.retry){
    img.dataset.retry="1";img.src=url(fallback);}else{img.style.visibility="hidden";}});
  var k=figs.length;figs.push({full:url(full),text:text});img.addEventListener("click",function(){open(k);});
  f.appendChild(img);return f;}
function section(i){var im=I[i],s=el("section","img"),h=el("h2");s.id="image-"+i;
  var nm=el("span","name",im[1]||im[0]);nm.title=im[0];h.appendChild(nm);
  if(im[3])h.appendChild(el("span","pred",im[3]));
  if(im[4])h.appendChild(el("span","badge kept","kept from an earlier run"));s.appendChild(h);
  var cols=M.map(function(_,m){return m;}).filter(function(m){return S.on[m];});
  var g=el("div","grid");g.style.gridTemplateColumns="repeat("+(cols.length+1)+",var(--w))";
  g.appendChild(el("div","head","input"));cols.forEach(function(m){g.appendChild(el("div","head",M[m]));});
  im[5].forEach(function(r,j){
    if(j===0){var f=im[2]?picture(im[2],im[2],im[0],null):el("figure");f.style.gridRow="span "+im[5].length;
      g.appendChild(f);}
    cols.forEach(function(m){var c=r[3].find(function(c){return c[0]===m;});
      if(!c){g.appendChild(el("div"));return;}
      var prev="report_files/"+c[1].replace(/\.png$/,"")+".jpg",text=caption(r)+" \u00b7 "+M[m];
      var f=picture(prev,c[1],text,c[1]),cap=el("figcaption",null,caption(r));
      if(c[2]){var b=el("span","badge warn","\u26a0 flat map");b.title="the map is constant: "+M[m]+
        " found no evidence for this target (all-zero gradients or scores, or NaN/Inf replaced by zeros)";
        cap.appendChild(b);}
      if(c[3]!=null)cap.title=M[m]+": "+num(c[3])+" s (this image's share of its batch)";
      f.appendChild(cap);g.appendChild(f);});});
  s.appendChild(g);return s;}
function pager(nav,pages){nav.textContent="";if(pages<=1)return;
  function b(t,p){var x=el("button",null,t);x.type="button";x.disabled=p<0||p>=pages||p===S.page;
    x.addEventListener("click",function(){S.page=p;render(true);});nav.appendChild(x);}
  b("\u00ab first",0);b("\u2039 previous",S.page-1);nav.appendChild(el("span",null,"page "+(S.page+1)+" of "+pages));
  b("next \u203a",S.page+1);b("last \u00bb",pages-1);var sel=el("select");sizes.forEach(function(n){
    var o=el("option",null,n+" images per page");o.value=n;o.selected=n===S.size;sel.appendChild(o);});
  sel.addEventListener("change",function(){S.size=+sel.value;S.page=0;render(true);});nav.appendChild(sel);}
function render(scroll){var g=document.getElementById("gallery"),n=S.shown.length,pages=Math.ceil(n/S.size)||1;
  if(S.page>=pages)S.page=pages-1;figs=[];var frag=document.createDocumentFragment();
  S.shown.slice(S.page*S.size,(S.page+1)*S.size).forEach(function(i){frag.appendChild(section(i));});
  g.textContent="";g.appendChild(frag);pager(document.getElementById("pager-top"),pages);
  pager(document.getElementById("pager-bottom"),pages);
  document.getElementById("count").textContent=n+" of "+I.length+" images";
  if(scroll)document.getElementById("controls").scrollIntoView();}
function filter(){var words=document.getElementById("filter").value.toLowerCase().split(/\s+/).filter(Boolean),
  w=document.getElementById("warned").checked;S.shown=[];
  for(var i=0;i<I.length;i++){if(w&&!warned[i])continue;var h=hay[i],ok=true;
    for(var j=0;j<words.length;j++)if(h.indexOf(words[j])<0){ok=false;break;}if(ok)S.shown.push(i);}
  document.querySelectorAll(".card.failed").forEach(function(c){var t=c.textContent.toLowerCase();
    c.hidden=w||!words.every(function(x){return t.indexOf(x)>=0;});});
  S.page=0;render(false);}
var box=document.getElementById("methods");M.forEach(function(name,m){var l=el("label"),c=el("input");
  c.type="checkbox";c.checked=true;c.addEventListener("change",function(){S.on[m]=c.checked;render(false);});
  l.appendChild(c);l.appendChild(document.createTextNode(" "+name));box.appendChild(l);});
document.getElementById("filter").addEventListener("input",filter);
document.getElementById("warned").addEventListener("change",filter);
var modes=["auto","light","dark"],th=document.getElementById("theme");th.addEventListener("click",function(){
  var m=modes[(modes.indexOf(th.dataset.mode||"auto")+1)%3];th.dataset.mode=m;th.textContent="theme: "+m;
  if(m==="auto")document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme",m);});
render(false);window.reportReady=performance.now();})();
"""
