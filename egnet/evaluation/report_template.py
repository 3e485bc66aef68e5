"""The HTML of `egnet report` (Jinja2, autoescaped): one self-contained page.

No network assets: inline CSS, images as ``data:`` URIs, no JavaScript. Every number a
reviewer reads also sits in a ``data-key``/``data-value`` attribute (full precision),
and the whole data behind the page in ``<script type="application/json"
id="report-data">`` (not executed), so tools and tests can read the page back.
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; color: #1d2330; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #d0d5dd; }
.meta { color: #5a6473; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d5dd; padding: 3px 9px; text-align: right; }
th { background: #f2f4f7; } td.name, th.name { text-align: left; }
.pos { color: #08783a; } .neg { color: #b42318; } .na { color: #98a2b3; }
.note { background: #fffaeb; border-left: 4px solid #f79009; padding: 6px 10px; margin: 0.6em 0; }
.chart { max-width: 100%; }
.cols { display: flex; gap: 24px; flex-wrap: wrap; } .cols > div { flex: 1 1 460px; min-width: 0; }
.gallery figure { margin: 0 0 14px 0; } .gallery figcaption { font-size: 0.85em; color: #344054; }
.panels { display: grid; grid-template-columns: repeat({{ panel_columns }}, 1fr); gap: 4px; }
.panels img { width: 100%; display: block; } .panels span { font-size: 0.75em; color: #5a6473; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="meta">Generated {{ generated }} by egnet report. Paper protocol (Tan et al., Sec. 5.1):
{{ protocol }}</p>

<h2>Runs</h2>
<table id="runs">
<tr><th class="name"></th>{% for r in runs %}<th class="name">{{ r.label }}</th>{% endfor %}</tr>
{% for row in run_rows %}<tr><td class="name">{{ row.name }}</td>
{% for v in row.texts %}<td class="name">{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% for n in notes %}<div class="note">{{ n }}</div>{% endfor %}

<h2>Headline metrics</h2>
{{ table(headline) }}

<h2>EF1 per exposure bin</h2>
<p>Exposure = HSV V of the input pixel; EF1 = F1 of the labelled pixels of each bin
({{ ef1_average }} over classes). Reference: the paper's Table 2, EGNet row.</p>
<img class="chart" alt="EF1 per exposure bin" src="{{ charts.ef1 }}">
{{ table(ef1) }}

{% if paired %}<h2>Paired comparison on the same test images</h2>
{% if paired.get("note") %}<div class="note">{{ paired.note }}</div>{% else %}
<p>{{ paired.text }} The promotion gate reads the lower bounds (docs/registry.md).</p>
<img class="chart" alt="EF1 difference per exposure bin with intervals" src="{{ paired.chart }}">
{{ table(paired.table) }}{% endif %}{% endif %}

<h2>IoU per class</h2>
<img class="chart" alt="IoU per class" src="{{ charts.iou }}">
{{ table(iou) }}

<h2>Most confused classes in the darkest and brightest bins</h2>
<p>Ground-truth pixels of a class predicted as another class, from the per-bin confusion
counts (share = of that class's labelled pixels in the bin).</p>
<div class="cols">{% for r in runs %}<div><h3>{{ r.label }}</h3>
{% if r.confused %}{% for c in r.confused %}<h4>{{ c.title }}</h4>
<table class="confused" data-run="{{ r.key }}" data-bin="{{ c.bin }}">
<tr><th class="name">ground truth</th><th class="name">predicted as</th><th>pixels</th><th>share</th></tr>
{% for e in c.rows %}<tr><td class="name">{{ e.gt }}</td><td class="name">{{ e.pred }}</td>
<td data-run="{{ r.key }}" data-key="confused.{{ c.bin }}.{{ e.gt }}.{{ e.pred }}"
data-value="{{ e.pixels }}">{{ e.pixels }}</td>
<td>{{ "%.1f" % (100 * e.share) }}%</td></tr>
{% else %}<tr><td class="name" colspan="4">no confusion</td></tr>{% endfor %}</table>
{% endfor %}{% else %}<div class="note">{{ r.missing_confusion }}</div>{% endif %}
</div>{% endfor %}</div>

<h2>Worst test images</h2>
<p>The test images with the lowest per-image mIoU (mean IoU over the classes present in the
image's ground truth or prediction), paper protocol.</p>
<div class="cols gallery">{% for r in runs %}<div><h3>{{ r.label }}</h3>
{% if r.gallery %}{% for g in r.gallery %}<figure data-run="{{ r.key }}" data-stem="{{ g.stem }}">
<figcaption>{{ g.rank }}. <b>{{ g.stem }}</b>: mIoU <span data-run="{{ r.key }}"
data-key="image_mIoU.{{ g.stem }}"
data-value="{{ g.miou }}">{{ "%.3f" % g.miou }}</span>{% if g.mean_exposure is not none %}, mean exposure
{{ "%.2f" % g.mean_exposure }}{% endif %}</figcaption>
<div class="panels">{% for p in g.panels %}<div><img alt="{{ p.name }} {{ g.stem }}" src="{{ p.uri }}">
<span>{{ p.name }}</span></div>{% endfor %}</div></figure>
{% endfor %}{% else %}<div class="note">{{ r.missing_gallery }}</div>
{% if r.qualitative %}<img class="chart" alt="qualitative examples"
src="{{ r.qualitative }}">{% endif %}{% endif %}
</div>{% endfor %}</div>

<script type="application/json" id="report-data">{{ data_json }}</script>
</body>
</html>
"""

#: a metrics table: rows of {name, key, cells: [{run, value, text}], delta?}
TABLE_MACRO = r"""{% macro table(t) -%}
<table id="{{ t.id }}">
<tr><th class="name">{{ t.first }}</th>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr><td class="name">{{ row.name }}</td>
{% for c in row.cells %}<td{% if c.get("key") %} data-run="{{ c.run }}" data-key="{{ c.key }}"
data-value="{{ c.raw }}"{% endif %}
{% if c.get("cls") %} class="{{ c.cls }}"{% endif %}>{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}</table>
{%- endmacro %}"""
