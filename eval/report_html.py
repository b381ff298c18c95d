"""One self-contained HTML page: recipe, per-site sensitivity (sortable table, bar plot, per-timestep curves),
value histograms of the worst sites with their quantization grid, and the eval metrics and image grid.

    python -m eval.report_html --diagnosis runs/doctor/diagnosis.json --eval runs/quantize_eval --out report.html

Plots are inline SVG drawn here; images are embedded as base64 PNG; the one script (table sorting) is inline, so
the file opens anywhere without a network. Tested in headless Chromium (tests/eval/test_report_html.py).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visq.doctor import Diagnosis, Histogram

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#1d1d1f;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
td:first-child,th:first-child,td.l,th.l{text-align:left}td.l{white-space:nowrap}th{background:#f3f4f6;position:sticky;top:0}
th.sortable{cursor:pointer}th.sortable:after{content:" \\2195";color:#999}code{font-size:12px}
.scroll{max-height:560px;overflow:auto;border:1px solid #eee}.hists{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #e5e5e5;padding:8px;border-radius:6px}.note{color:#555;font-size:12.5px}
img.grid{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th.sortable').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var desc = th.dataset.order !== 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = desc ? 'desc' : 'asc';
    });
  });
});
document.body.dataset.ready = '1';
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "inf" if value == math.inf else fmt.format(value)


def _td(value: Any, shown: str | None = None, cls: str = "") -> str:
    v = "" if value is None else (1e308 if value == math.inf else value)
    klass = f' class="{cls}"' if cls else ""
    return f'<td{klass} data-v="{_e(v)}">{_e(shown if shown is not None else value)}</td>'


def bar_svg(labels: Sequence[str], values: Sequence[float], title: str, width: int = 760) -> str:
    """Horizontal bars, one per label (values >= 0), with the value printed at the end of each bar."""
    row, left, right = 15, 330, 70
    height = 28 + row * len(values)
    top = max(values, default=1.0) or 1.0
    parts = [f'<svg class="plot" role="img" aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<text x="4" y="14" font-size="12" font-weight="bold">{_e(title)}</text>']
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 22 + i * row
        length = max((width - left - right) * value / top, 1.0)
        parts.append(f'<text x="{left - 6}" y="{y + 10}" font-size="10.5" text-anchor="end">{_e(label[-52:])}</text>'
                     f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{row - 3}" fill="#4a6fc8"/>'
                     f'<text x="{left + length + 4:.1f}" y="{y + 10}" font-size="10.5">{value:.3g}</text>')
    return "".join(parts) + "</svg>"


def histogram_svg(h: Histogram, width: int = 360, height: int = 190) -> str:
    """Bars of the histogram (log-count scale) with the quantization levels drawn as vertical lines."""
    pad_l, pad_b, pad_t = 8, 30, 36
    lo, hi = h.edges[0], h.edges[-1]
    span = (hi - lo) or 1.0
    x = lambda v: pad_l + (width - 2 * pad_l) * (v - lo) / span  # noqa: E731
    top = math.log1p(max(h.counts, default=1))
    plot_h = height - pad_b - pad_t
    parts = [f'<svg class="plot hist" role="img" aria-label="histogram {_e(h.site)}" '
             f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<text x="4" y="13" font-size="11" font-weight="bold">{_e(h.site[-58:])}</text>',
             f'<text x="4" y="27" font-size="10">{_e(h.what[:70])}</text>']
    for count, a, b in zip(h.counts, h.edges, h.edges[1:]):
        bar = plot_h * math.log1p(count) / top if top else 0
        parts.append(f'<rect x="{x(a):.2f}" y="{height - pad_b - bar:.2f}" width="{max(x(b) - x(a) - 0.5, 0.5):.2f}" '
                     f'height="{bar:.2f}" fill="#7a8fb8"/>')
    step = max(1, len(h.levels) // 64)  # an 8-bit grid has 256 levels: draw every step-th
    for level in h.levels[::step]:
        parts.append(f'<line x1="{x(level):.2f}" x2="{x(level):.2f}" y1="{pad_t}" y2="{height - pad_b}" '
                     'stroke="#d0453a" stroke-width="0.7" stroke-opacity="0.75"/>')
    parts.append(f'<line x1="{pad_l}" x2="{width - pad_l}" y1="{height - pad_b}" y2="{height - pad_b}" stroke="#333"/>'
                 f'<text x="{pad_l}" y="{height - 12}" font-size="10">{lo:.3g}</text>'
                 f'<text x="{width - pad_l}" y="{height - 12}" font-size="10" text-anchor="end">{hi:.3g}</text>')
    if h.levels:
        parts.append(f'<text x="{width / 2:.0f}" y="{height - 12}" font-size="10" text-anchor="middle" '
                     f'fill="#d0453a">{len(h.levels)} levels{" (every " + str(step) + "th drawn)" if step > 1 else ""}'
                     "</text>")
    return "".join(parts) + "</svg>"


def timestep_svg(diagnosis: Diagnosis, n: int = 5, width: int = 520, height: int = 220) -> str:
    """Model-output MSE against timestep for the ``n`` most sensitive sites (diffusion only, else empty)."""
    sites = [s for s in diagnosis.sites if s.timestep_mse][:n]
    if not sites:
        return ""
    ts = sorted({t for s in sites for t in s.timestep_mse})
    vals = [v for s in sites for v in s.timestep_mse.values() if v > 0]
    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    hi = hi if hi > lo else lo + 1
    pad_l, pad_r, pad_t, pad_b = 48, 12, 20, 30
    x = lambda t: pad_l + (width - pad_l - pad_r) * (t - ts[0]) / ((ts[-1] - ts[0]) or 1)  # noqa: E731
    y = lambda v: pad_t + (height - pad_t - pad_b) * (hi - math.log10(max(v, 1e-300))) / (hi - lo)  # noqa: E731
    colors = ("#4a6fc8", "#d0453a", "#3a9a5b", "#c08a1e", "#8a4ac8")
    parts = [f'<svg class="plot" role="img" aria-label="per-timestep error" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height + 16 * len(sites)}">',
             '<text x="4" y="13" font-size="11" font-weight="bold">model-output MSE per timestep (log scale), '
             'most sensitive sites</text>']
    for i, s in enumerate(sites):
        points = " ".join(f"{x(t):.1f},{y(s.timestep_mse[t]):.1f}" for t in ts if t in s.timestep_mse)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colors[i % 5]}" stroke-width="1.6"/>'
                     f'<text x="{pad_l}" y="{height + 12 + 16 * i}" font-size="10" fill="{colors[i % 5]}">'
                     f'{_e(s.site[-70:])}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 10}" font-size="10">t={ts[0]:g}</text>'
                 f'<text x="{width - pad_r}" y="{height - 10}" font-size="10" text-anchor="end">t={ts[-1]:g}</text>'
                 f'<text x="4" y="{pad_t + 8}" font-size="10">{10 ** hi:.2g}</text>'
                 f'<text x="4" y="{height - pad_b}" font-size="10">{10 ** lo:.2g}</text>')
    return "".join(parts) + "</svg>"


def _site_table(d: Diagnosis, mixed_bits: dict[str, int] | None) -> str:
    widths = list(d.widths)
    head = (["rank", "site", "layer", "role", "size", "spec", "model MSE", "model SQNR dB", "layer SQNR dB"]
            + [f"MSE @{b}b" for b in widths] + ["top-1 change"] + (["mixed bits"] if mixed_bits else []))
    left = {1, 2, 3, 5}  # text columns
    cells = "".join(f'<th class="sortable{" l" if i in left else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    rows = []
    for rank, s in enumerate(d.sites, 1):
        sqnr, layer_sqnr = d.sqnr(s.sensitivity), d.sqnr(s.layer_mse[s.bits], s.layer_power)
        row = [_td(rank), _td(s.site, cls="l"), _td(s.layer, cls="l"), _td(s.role, cls="l"), _td(s.size),
               _td(s.spec, cls="l"), _td(s.sensitivity, _num(s.sensitivity)), _td(sqnr, _num(sqnr, "{:.1f}")),
               _td(layer_sqnr, _num(layer_sqnr, "{:.1f}"))]
        row += [_td(s.model_mse.get(b), _num(s.model_mse.get(b))) for b in widths]
        row.append(_td(s.top1_delta, _num(s.top1_delta, "{:+.2f}")))
        if mixed_bits:
            row.append(_td(mixed_bits.get(s.site), str(mixed_bits.get(s.site, "-"))))
        rows.append("<tr>" + "".join(row) + "</tr>")
    return (f'<div class="scroll"><table id="sites" class="sortable"><thead><tr>{cells}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _recipe_table(recipe: dict[str, Any], limit: int = 40) -> str:
    rules = recipe.get("rules", [])
    rows = "".join(f"<tr><td><code>{_e(r['pattern'])}</code></td><td class='l'>{_e(_spec_text(r['spec']))}</td></tr>"
                   for r in rules[:limit])
    more = f"<p class='note'>... and {len(rules) - limit} more rules</p>" if len(rules) > limit else ""
    return (f"<p>recipe <b>{_e(recipe.get('name'))}</b>, method <b>{_e(recipe.get('method'))}</b> "
            f"{_e(recipe.get('method_kwargs') or '')}, host float defaults kept: "
            f"{_e(recipe.get('keep_host_defaults', True))}; first matching rule wins.</p>"
            f"<table class='recipe'><thead><tr><th>pattern</th><th class='l'>spec</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{more}")


def _spec_text(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "float"
    from visq.quantizers import QuantSpec

    return QuantSpec.from_dict(spec).short()


def _metrics_table(configs: dict[str, dict]) -> str:
    from eval.report import COLUMNS

    keys = [c for c in COLUMNS if any(c[0] in m for m in configs.values())]
    keys += [(k, k, "{:.4g}", False) for k in ("top1",) if any(k in m for m in configs.values())]
    head = "".join(f'<th class="sortable">{_e(h)}</th>' for _, h, _, _ in keys)
    rows = "".join("<tr>" + _td(name, cls="l") + "".join(
        _td(m.get(k), f.format(m[k]) if isinstance(m.get(k), (int, float)) else "-") for k, _, f, _ in keys)
                   + "</tr>" for name, m in configs.items())
    return (f'<table id="metrics" class="sortable"><thead><tr><th class="sortable l">config</th>{head}</tr>'
            f"</thead><tbody>{rows}</tbody></table>")


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="grid" alt="{_e(path.name)}" src="data:image/png;base64,{data}">'


def render(diagnosis: Diagnosis | None = None, *, recipes: dict[str, dict] | None = None,
           metrics: dict[str, dict] | None = None, images: Sequence[Path] = (), mixed: dict[str, int] | None = None,
           title: str = "visq report", notes: Sequence[str] = ()) -> str:
    """The page as a string. ``recipes``: name -> ``Recipe.to_dict()``; ``metrics``: config -> metric dict;
    ``images``: PNGs to embed (eval grids); ``mixed``: site -> chosen bits, shown as a table column."""
    body = [f"<h1>{_e(title)}</h1>"] + [f"<p class='note'>{_e(n)}</p>" for n in notes]
    if diagnosis is not None:
        d = diagnosis
        body.append(f"<p>{_e(d.model)} (host {_e(d.host)}): {len(d.sites)} quantizer sites measured alone at widths "
                    f"{', '.join(map(str, d.widths))} on {d.calls} calibration calls in {d.seconds:.0f} s. "
                    "Sensitivity = MSE of the whole model's output against float with only that site quantized at "
                    "the recipe's width; SQNR against the float output's power."
                    + (f" Float top-1 {d.float_top1:.2f}%." if d.float_top1 is not None else "") + "</p>")
        body.append("<h2>Recipe</h2>" + _recipe_table(d.recipe.to_dict()))
        top = d.sites[:30]
        body.append("<h2>Sensitivity</h2>" + bar_svg([s.site for s in top], [s.sensitivity for s in top],
                                                     "model-output MSE with only this site quantized (top 30)"))
        body.append(timestep_svg(d))
        body.append("<h2>Per-site table</h2><p class='note'>Click a header to sort.</p>" + _site_table(d, mixed))
        if d.histograms:
            cards = "".join(f"<div class='card'>{histogram_svg(h)}</div>" for h in d.histograms)
            body.append("<h2>Values and grids of the most sensitive sites</h2><p class='note'>Histogram (log counts) "
                        "of the values each site quantizes; red lines: the dequantized levels of its grid "
                        "(per-channel weights: the channel with the largest error).</p>"
                        f"<div class='hists'>{cards}</div>")
    for name, recipe in (recipes or {}).items():
        body.append(f"<h2>Recipe of {_e(name)}</h2>" + _recipe_table(recipe))
    if metrics:
        body.append("<h2>Evaluation</h2>" + _metrics_table(metrics))
    for path in images:
        body.append(f"<h3>{_e(Path(path).name)}</h3>{_png(Path(path))}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}<script>{_SCRIPT}</script></body></html>")


def from_eval_folder(out: Path) -> dict[str, Any]:
    """``metrics``, ``recipes`` and ``images`` of an ``eval.images`` run folder (what exists of them)."""
    found: dict[str, Any] = {"metrics": None, "recipes": {}, "images": []}
    metrics = out / "metrics.json"
    if metrics.is_file():
        found["metrics"] = json.loads(metrics.read_text()).get("configs")
    for quant in sorted((out / "_models").glob("*/quant.json")):
        found["recipes"][quant.parent.name] = json.loads(quant.read_text())["recipe"]
    found["images"] = [p for p in (out / "grid.png", out / "metrics.png") if p.is_file()]
    return found


def write(path: str | Path, diagnosis: Diagnosis | None = None, eval_folder: str | Path | None = None,
          **kwargs: Any) -> Path:
    """Write the page to ``path``; with ``eval_folder`` its metrics, recipes and grids are added."""
    path = Path(path)
    if eval_folder is not None:
        found = from_eval_folder(Path(eval_folder))
        kwargs.setdefault("metrics", found["metrics"])
        kwargs.setdefault("recipes", found["recipes"])
        kwargs.setdefault("images", found["images"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(diagnosis, **kwargs))
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diagnosis", help="diagnosis JSON written by `visq doctor --out` or Diagnosis.save")
    p.add_argument("--eval", help="an eval.images / quantize_eval output folder (metrics.json, grid.png)")
    p.add_argument("--out", required=True, help="the HTML file to write")
    a = p.parse_args(argv)
    if not a.diagnosis and not a.eval:
        p.error("give --diagnosis and/or --eval")
    diagnosis = Diagnosis.load(a.diagnosis) if a.diagnosis else None
    path = write(a.out, diagnosis, a.eval)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
