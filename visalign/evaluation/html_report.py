"""``report.html``: the evaluation report of :func:`visalign.evaluation.report.compare_models` as one browser page.

The page is self-contained (inline CSS, SVG and a few lines of JS; images by paths relative to the report folder; no
network) and shows only numbers the report already holds: per scorer the summary of ``report.json`` (means,
medians, win/tie/loss rates and the mean difference with their bootstrap intervals; the means and difference of
each detail of the score, such as a weighted reward's components), the scorer's scale and
provenance, a histogram of each model's scores (``scores.jsonl``), and per (prompt, seed) both models' images with
their scores, sortable by the score difference (default: largest ``|A - B|`` of the first scorer first). Every
piece of user text (prompts, model paths, scorer names) is HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from visalign.evaluation.winrate import outcomes

REPORT_HTML = "report.html"
COLORS = {"a": "#2b6cb0", "b": "#dd6b20"}
OUTCOME_CLASS = {1: "win", 0: "tie", -1: "loss"}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1a202c}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #cbd5e0;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#edf2f7}.ci{color:#718096;font-size:90%}
.a{color:#2b6cb0}.b{color:#dd6b20}.win{background:#c6f6d5}.loss{background:#fed7d7}.tie{background:#edf2f7}
#pairs img{width:160px;height:auto;image-rendering:pixelated;display:block}
.prompt{max-width:22em;white-space:pre-wrap;word-break:break-word}
.hists{display:flex;flex-wrap:wrap;gap:1.5em}code{font-size:90%}
"""

# Sorts the comparison rows by the chosen scorer's score margin (positive: A better); runs once on load.
_JS = """
(() => {
  const body = document.querySelector('#pairs tbody'), select = document.getElementById('sort');
  const order = {abs: (x, y) => Math.abs(y) - Math.abs(x), desc: (x, y) => y - x, asc: (x, y) => x - y};
  function sort() {
    const [mode, col] = select.value.split(':');
    const key = r => Number(mode === 'prompt' ? r.dataset.order : r.dataset['m' + col]);
    const compare = mode === 'prompt' ? (x, y) => x - y : order[mode];
    Array.from(body.rows).sort((x, y) => compare(key(x), key(y))).forEach(r => body.appendChild(r));
  }
  select.addEventListener('change', sort);
  sort();
})();
"""


def write_html_report(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> Path:
    """Write ``report.html`` into ``out_dir`` (where ``rows``' image paths are relative to); returns its path."""
    path = Path(out_dir) / REPORT_HTML
    path.write_text(render_html(report, rows), encoding="utf-8")
    return path


def render_html(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The page (module docstring) from a ``compare_models`` report and its ``scores.jsonl`` rows."""
    scorers = report["scorers"]
    level = f"{report['bootstrap']['confidence']:.0%}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>visalign eval: A vs B</title><style>{_CSS}</style></head><body>",
        f"<h1>visalign eval: A vs B ({report['num_prompts']} prompts &times; {report['seeds_per_prompt']} "
        "seeds)</h1>", _models_table(report),
        f"<h2>Summary</h2><p>Win/tie/loss are strict rates of A against B over all (prompt, seed) comparisons; "
        f"brackets are {level} paired bootstrap intervals over prompts ({report['bootstrap']['num_resamples']} "
        f"resamples, seed {report['bootstrap']['seed']}). Mean A &minus; B is in the scorer's raw units.</p>",
        _summary_table(scorers), _details_table(scorers),
        "<h2>Scales and provenance</h2>", _provenance(scorers),
        "<h2>Score histograms</h2>",
        '<div class="hists">' + "".join(_histogram(key, s, rows) for key, s in scorers.items()) + "</div>",
        "<h2>Images</h2>", _comparisons(scorers, rows),
        "<p>Files: " + ", ".join(f'<a href="{escape(name)}">{escape(name)}</a>'
                                 for name in ("report.json", *report["files"].values()) if name != REPORT_HTML)
        + "</p>",
        f"<script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _number(value: float, fmt: str, scorer: str, field: str) -> str:
    """A table number: shown as ``fmt``, its exact ``report.json`` value and path in data attributes."""
    return (f'<span class="num" data-scorer="{escape(scorer)}" data-field="{field}" '
            f'data-value="{value!r}">{format(value, fmt)}</span>')


def _with_ci(section: Mapping[str, Any], scorer: str, field: str, fmt: str) -> str:
    low, high = (_number(v, fmt, scorer, f"{field}_ci.{i}") for i, v in enumerate(section[f"{field}_ci"]))
    return f'{_number(section[field], fmt, scorer, field)} <span class="ci">[{low}, {high}]</span>'


def _models_table(report: Mapping[str, Any]) -> str:
    rows = []
    for label, m in report["models"].items():
        lora = f"<code>{escape(m['lora'])}</code>" if m["lora"] else "-"
        settings = m["settings"]
        rows.append(f'<tr><th class="{label}">{label.upper()}</th><td><code>{escape(m["model"])}</code></td>'
                    f"<td>{lora}</td><td>{settings['guidance_scale']}</td>"
                    f"<td>{settings['num_inference_steps']}</td></tr>")
    return ("<table id=\"models\"><tr><th></th><th>model</th><th>LoRA</th><th>guidance</th><th>steps</th></tr>"
            + "".join(rows) + "</table>")


def _summary_table(scorers: Mapping[str, Mapping[str, Any]]) -> str:
    head = ("<tr><th>scorer</th><th>mean A</th><th>mean B</th><th>median A</th><th>median B</th><th>A wins</th>"
            "<th>ties</th><th>A loses</th><th>mean A &minus; B</th><th>tie tol.</th></tr>")
    body = []
    for key, s in scorers.items():
        cells = [_number(s[f], ".4g", key, f) for f in ("mean_a", "mean_b", "median_a", "median_b")]
        cells += [_with_ci(s, key, f, ".1%") for f in ("win", "tie", "loss")]
        cells += [_with_ci(s, key, "mean_diff", ".4g"), _number(s["tie_tolerance"], "g", key, "tie_tolerance")]
        body.append(f"<tr><th>{escape(key)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table id="summary">{head}{"".join(body)}</table>'


def _details_table(scorers: Mapping[str, Mapping[str, Any]]) -> str:
    """What each score is made of (``details.compared`` of each section), or nothing when no scorer reports any."""
    body = []
    for key, s in scorers.items():
        for name, d in s.get("details", {}).get("compared", {}).items():
            field = f"details.compared.{name}"
            low, high = (_number(v, "+.4g", key, f"{field}.mean_diff_ci.{i}") for i, v in enumerate(d["mean_diff_ci"]))
            cells = [_number(d[f], ".4g", key, f"{field}.{f}") for f in ("mean_a", "mean_b")]
            cells.append(f'{_number(d["mean_diff"], "+.4g", key, f"{field}.mean_diff")} '
                         f'<span class="ci">[{low}, {high}]</span>')
            body.append(f"<tr><th>{escape(key)}</th><th>{escape(name)}</th>"
                        + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not body:
        return ""
    head = "<tr><th>scorer</th><th>detail</th><th>mean A</th><th>mean B</th><th>mean A &minus; B</th></tr>"
    return ("<h3>Score details</h3><p>What each score is made of (e.g. the components of a weighted reward), "
            f'compared the same way.</p><table id="details">{head}{"".join(body)}</table>')


def _provenance(scorers: Mapping[str, Mapping[str, Any]]) -> str:
    items = []
    for key, s in scorers.items():
        weights = "".join(
            f"<li>{escape(name)}: model <code>{escape(str(p['model_id']))}</code>, sha256 "
            f"<code>{escape((p['weights_sha256'] or 'unknown')[:16])}</code>, {escape(str(p['dtype']))}, "
            f"{escape(str(p['preprocessing']))}{', variant ' + escape(str(p['variant'])) if p['variant'] else ''}"
            "</li>" for name, p in s["provenance"].items())
        items.append(f"<li><b>{escape(key)}</b> ({escape(s['scorer'])}): {escape(s['scale'])}.<ul>{weights}</ul></li>")
    return f'<ul id="provenance">{"".join(items)}</ul>'


def _histogram(key: str, section: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], *, width: int = 360,
               height: int = 150) -> str:
    """Inline SVG: both models' score counts over shared bins (side by side in each bin), dashed lines at the
    report's means."""
    scores = {m: np.array([r["score"] for r in rows if r["scorer"] == key and r["model"] == m]) for m in COLORS}
    per_model = max(len(v) for v in scores.values())
    edges = np.histogram_bin_edges(np.concatenate(list(scores.values())),
                                   bins=min(30, max(5, math.ceil(math.sqrt(per_model)))))
    counts = {m: np.histogram(v, bins=edges)[0] for m, v in scores.items()}
    top = max(int(c.max()) for c in counts.values())
    left, bottom, plot_w, plot_h = 30, height - 20, width - 40, height - 40
    bin_w = plot_w / (len(edges) - 1)
    x = lambda value: left + (value - edges[0]) / (edges[-1] - edges[0]) * plot_w  # noqa: E731
    shapes = []
    for i, model in enumerate(COLORS):
        for j, count in enumerate(counts[model]):
            h = count / top * plot_h
            shapes.append(f'<rect x="{left + j * bin_w + i * bin_w / 2:.1f}" y="{bottom - h:.1f}" '
                          f'width="{bin_w / 2 - 1:.1f}" height="{h:.1f}" fill="{COLORS[model]}">'
                          f"<title>{model.upper()}: {count} in [{edges[j]:.4g}, {edges[j + 1]:.4g}]</title></rect>")
        mean = x(section[f"mean_{model}"])
        shapes.append(f'<line x1="{mean:.1f}" x2="{mean:.1f}" y1="{bottom - plot_h}" y2="{bottom}" '
                      f'stroke="{COLORS[model]}" stroke-dasharray="4 3"/>')
    labels = (f'<text x="{left}" y="{height - 4}">{edges[0]:.4g}</text>'
              f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end">{edges[-1]:.4g}</text>'
              f'<text x="{left - 4}" y="{bottom - plot_h + 8}" text-anchor="end">{top}</text>'
              f'<text x="{left - 4}" y="{bottom}" text-anchor="end">0</text>'
              f'<text x="{left + plot_w}" y="12" text-anchor="end"><tspan fill="{COLORS["a"]}">&#9632; A</tspan> '
              f'<tspan fill="{COLORS["b"]}">&#9632; B</tspan> (dashed: means)</text>')
    return (f'<figure><svg class="histogram" data-scorer="{escape(key)}" width="{width}" height="{height}" '
            f'font-size="10" xmlns="http://www.w3.org/2000/svg" role="img">'
            f'<line x1="{left}" x2="{left + plot_w}" y1="{bottom}" y2="{bottom}" stroke="#4a5568"/>'
            f"{''.join(shapes)}{labels}</svg><figcaption>{escape(key)}: scores per image</figcaption></figure>")


def _comparisons(scorers: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    """One table row per (prompt, seed): the prompt, A's and B's image, and per scorer both scores and A - B
    (cell coloured by the report's strict outcome); ``data-m<i>`` holds scorer i's margin, positive when A is
    better, for sorting."""
    keys = list(scorers)
    samples: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rows:
        sample = samples.setdefault((r["prompt_index"], r["index"]), {"prompt": r["prompt"], "seed": r["seed"]})
        sample.setdefault("path", {})[r["model"]] = r["path"]
        sample.setdefault("score", {})[(r["scorer"], r["model"])] = r["score"]
    order = sorted(samples)
    shape = (max(p for p, _ in order) + 1, max(k for _, k in order) + 1)
    margins, results = {}, {}
    for key in keys:
        a, b = (np.array([samples[o]["score"][(key, m)] for o in order]).reshape(shape) for m in COLORS)
        sign = 1 if scorers[key]["higher_is_better"] else -1
        margins[key] = (sign * (a - b)).ravel()
        results[key] = outcomes(a, b, tie_tolerance=scorers[key]["tie_tolerance"],
                                higher_is_better=scorers[key]["higher_is_better"]).ravel()
    options = [f'<option value="{mode}:{i}">{escape(key)}: {text}</option>' for i, key in enumerate(keys)
               for mode, text in (("abs", "largest |A &minus; B| first"), ("desc", "A's biggest wins first"),
                                  ("asc", "A's biggest losses first"))]
    head = ("<tr><th>prompt</th><th>seed</th><th class=\"a\">A</th><th class=\"b\">B</th>"
            + "".join(f"<th>{escape(key)}: A / B / A &minus; B</th>" for key in keys) + "</tr>")
    body = []
    for n, (p, k) in enumerate(order):
        s = samples[(p, k)]
        data = "".join(f' data-m{i}="{float(margins[key][n])!r}"' for i, key in enumerate(keys))
        cells = [f'<td class="prompt">{escape(s["prompt"])}</td><td>{s["seed"]}</td>']
        cells += [f'<td><img src="{escape(s["path"][m])}" alt="{m.upper()}, prompt {p}, seed {s["seed"]}"></td>'
                  for m in COLORS]
        for key in keys:
            a, b = (s["score"][(key, m)] for m in COLORS)
            cells.append(f'<td class="{OUTCOME_CLASS[int(results[key][n])]}">'
                         + " / ".join(f'<span class="score {m}" data-scorer="{escape(key)}" data-model="{m}" '
                                      f'data-value="{v!r}">{v:.4g}</span>' for m, v in (("a", a), ("b", b)))
                         + f" / {a - b:+.4g}</td>")
        body.append(f'<tr data-order="{n}"{data}>{"".join(cells)}</tr>')
    return (f'<label>Sort by <select id="sort">{"".join(options)}<option value="prompt">prompt order</option>'
            f'</select></label><table id="pairs"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>')
