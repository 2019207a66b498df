"""Great Expectations Data Docs that open offline and show the data as text.

GX 1.24's page templates load Bootstrap, bootstrap-table, jQuery, Popper, Vega, Font Awesome and the GX logo
from CDNs, and fill their tables (the site index's list of validations) in the browser with bootstrap-table; GX
ships none of these files (its package has only ``render/view/static/{images,fonts,styles}``, which the site
builder copies into ``static/``), and it has no option to point the templates elsewhere. So the site is built
with views of our own, named in the site config (:func:`site_config`; GX's ``view`` setting of the index and
section builders), whose Jinja loader

* drops every ``<link>``/``<script>`` that names an ``http(s)://`` address and every remote CSS ``url(...)``
  from GX's templates as it loads them, and takes the navbar logo from the site's own ``static/images``;
* replaces five templates: ``bootstrap_table.j2`` (an HTML table written on the server, with a link per row
  where GX had a clickable row), ``graph.j2`` (the Vega-Lite chart's data as a table), ``js_script_imports.j2``
  and ``page_action_card.j2`` (jQuery-only buttons: none) and ``data_docs_custom_styles.css`` (GX's hook for
  custom styles, inlined into every page: the bit of Bootstrap's layout the pages use, icons as characters).

What GX renders from the data is not escaped everywhere (1.24.1 writes an unexpected value or a partition's
label into the page as it is), so every string skinflow hands GX that may come from the dataset (the
values of the columns a check reads, the ids, the class names in value sets) is HTML-escaped first
(:func:`gx_frame`, :func:`gx_text`) and read back with :func:`from_gx`. :func:`remote_assets` lists what a
page would fetch from the network (tests use it).
"""

from __future__ import annotations

import html
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from great_expectations.render.view.view import DefaultJinjaView
from jinja2 import BaseLoader, Environment, TemplateNotFound

from ml.storage import write_error

SITE_NAME = "skinflow"

# --------------------------------------------------------------------------- values handed to GX


def gx_text(value: Any) -> Any:
    """``value`` as GX may write it into a page: strings HTML-escaped (``&``, ``<``, ``>``), others as they are."""
    return html.escape(value, quote=False) if isinstance(value, str) else value


def from_gx(value: Any) -> Any:
    """The inverse of :func:`gx_text` (exact: every ``&`` was escaped)."""
    return html.unescape(value) if isinstance(value, str) else value


def gx_frame(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """``frame`` with the text of ``columns`` escaped by :func:`gx_text` (a copy; the others untouched)."""
    out = frame.copy(deep=False)
    for column in dict.fromkeys(c for c in columns if c in frame):
        values = frame[column]
        if values.dtype == object or isinstance(values.dtype, pd.StringDtype | pd.CategoricalDtype):
            out[column] = values.astype(object).map(gx_text)
    return out


# --------------------------------------------------------------------------- the site


def site_config(base_directory: Path) -> dict[str, Any]:
    """A Data Docs site in ``base_directory`` rendered by the offline views of this module."""
    view = {"module_name": __name__, "class_name": OfflinePageView.__name__}
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,  # the walkthrough modal needs jQuery
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(base_directory)},
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {"module_name": __name__, "class_name": OfflineIndexPageView.__name__},
        },
        "site_section_builders": {section: {"view": view} for section in ("expectations", "validations", "profiling")},
    }


T = TypeVar("T")


def built_atomically(docs_dir: Path, build: Callable[[Path], T]) -> T:
    """``build(tmp)`` writes the site into a hidden sibling of ``docs_dir`` (a copy of the site there
    already, so earlier validations keep their pages), which then replaces ``docs_dir``: a reader
    sees the old site or the whole new one, never half a site. A write that fails (a full disk, a
    read-only folder) removes the copy and raises :class:`ml.storage.StorageError` naming ``docs_dir``."""
    tmp = None
    try:
        docs_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{docs_dir.name}.", dir=docs_dir.parent))
        if docs_dir.is_dir():
            shutil.copytree(docs_dir, tmp, dirs_exist_ok=True)
        result = build(tmp)
        old = docs_dir.with_name(f"{tmp.name}.old")
        if docs_dir.exists():
            docs_dir.rename(old)
        tmp.rename(docs_dir)
        shutil.rmtree(old, ignore_errors=True)
        return result
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(docs_dir, exc) from exc


_REMOTE_TAG = re.compile(
    r"<(?:link\b[^>]*?\bhref|script\b[^>]*?\bsrc)\s*=\s*[\"']?(?:https?:)?//[^>]*>(?:\s*</script>)?\s*", re.I
)
_REMOTE_CSS_URL = re.compile(r"url\(\s*[\"']?(?:https?:)?//[^)]*\)", re.I)
_REMOTE_IMAGES_DIR = re.compile(r"\{%-?\s*set\s+static_images_dir\s*=\s*[\"']https?://[^\"']*[\"']\s*-?%\}")
_LOCAL_IMAGES_DIR = '{% if "SiteIndex" in renderer_type %}{% set static_images_dir = "./static/images/" %}{% endif %}'


def offline_source(source: str) -> str:
    """A GX template or stylesheet without its remote assets (see the module's docstring)."""
    source = _REMOTE_IMAGES_DIR.sub(_LOCAL_IMAGES_DIR, source)
    return _REMOTE_CSS_URL.sub("none", _REMOTE_TAG.sub("", source))


_ASSET = re.compile(
    r"<(?:script|link|img|iframe|source|video|audio|embed)\b[^>]*?\b(?:src|href|srcset)\s*=\s*[\"']?((?:https?:)?//[^\"'\s>]+)",
    re.I,
)


def remote_assets(page: str) -> list[str]:
    """The addresses ``page`` would load from the network: remote ``src``/``href`` of scripts, stylesheets,
    images and media, and remote CSS ``url(...)``. Links (``<a href>``) are not loads and are not listed."""
    return _ASSET.findall(page) + _REMOTE_CSS_URL.findall(page)


# --------------------------------------------------------------------------- the views

_STYLES = r"""
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;font-size:14px;color:#212529;margin:0}
a{color:#0062cc}
.container-fluid{padding:1rem 2rem}
.row{display:flex;flex-wrap:wrap}
.col-12,.col-xs-12,.col-sm-12{flex:0 0 100%;max-width:100%}
@media (min-width:768px){.col-md-2{flex:0 0 16.6%;max-width:16.6%}.col-md-10{flex:0 0 83.3%;max-width:83.3%}
.col-6{flex:0 0 50%;max-width:50%}}
.navbar{display:flex;align-items:center;padding:.5rem 1rem;border-bottom:1px solid #dee2e6}
.navbar-brand img{height:40px!important}
.breadcrumb{display:inline-flex;list-style:none;margin:0;padding:0 .75rem}
.breadcrumb-item+.breadcrumb-item::before{content:"/";padding:0 .5rem;color:#6c757d}
.nav{list-style:none;padding-left:0;margin:0}
.table{border-collapse:collapse;width:100%;margin-bottom:1rem}
.table td,.table th{border-top:1px solid #dee2e6;padding:.3rem .5rem;vertical-align:top;text-align:left}
.table thead th{border-bottom:2px solid #dee2e6}
.table-responsive,.show-scrollbars{overflow-x:auto}
.card{border:1px solid #dee2e6;border-radius:.25rem;margin-bottom:1rem}
.card-header{background:#f7f7f7;padding:.5rem 1rem;border-bottom:1px solid #dee2e6}
.card-body{padding:.75rem 1rem}
.badge{display:inline-block;padding:.2em .45em;border-radius:.25rem;background:#6c757d;color:#fff;font-size:85%}
.badge-warning{background:#ffc107;color:#212529}
.alert{padding:.4rem .75rem;border-radius:.25rem;margin-bottom:.5rem}
.alert-secondary{background:#e2e3e5}.alert-warning{background:#fff3cd}
.text-success{color:#1a7f37}.text-danger{color:#cf222e}.text-muted{color:#6c757d}
.fas{font-style:normal;font-weight:bold}
.fa-check-circle::before{content:"\2714"}.fa-times::before{content:"\2716"}.fa-question-circle::before{content:"?"}
.sticky{position:sticky;top:1rem}
"""

_TABLE = """{% include 'content_block_header.j2' %}
{%- if "styling" in content_block and "body" in content_block["styling"] -%}
  {%- set body_styling = content_block["styling"]["body"] | render_styling -%}
{%- else -%}
  {%- set body_styling = "" -%}
{%- endif -%}
{%- set columns = content_block["table_columns"] -%}
{%- set rows = content_block["table_data"] | render_bootstrap_table_data -%}
{%- set links = rows | selectattr("_table_row_link_path") | list | length > 0 -%}
<div class="table-responsive">
<table id="{{ content_block_id ~ '-body-table' }}" class="table"
  {{ body_styling | replace("{{section_id}}", section_id) | replace("{{content_block_id}}", content_block_id) }}>
<thead>
{%- if "title_row" in content_block %}
<tr><th colspan="{{ columns | length + (1 if links else 0) }}">{{ content_block["title_row"] | render_content_block }}</th></tr>
{%- endif %}
<tr>{% for column in columns %}<th>{{ column["title"] | e }}</th>{% endfor %}{% if links %}<th>page</th>{% endif %}</tr>
</thead>
<tbody>
{%- for row in rows %}
<tr>{% for column in columns %}<td>{{ row.get(column["field"]) if row.get(column["field"]) is not none else "" }}</td>{% endfor %}
{%- if links %}<td>{% if row.get("_table_row_link_path") %}<a href="{{ row["_table_row_link_path"] | e }}">open</a>{% endif %}</td>{% endif %}</tr>
{%- endfor %}
</tbody>
</table>
</div>
"""

_GRAPH = """{% include 'content_block_header.j2' %}
{%- set rows = content_block["graph"] | graph_rows -%}
{%- if rows %}
<div class="show-scrollbars"><table class="table ge-offline-graph">
<thead><tr>{% for key in rows[0] %}<th>{{ key | e }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in rows %}<tr>{% for key in rows[0] %}<td>{{ row.get(key) | e }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table></div>
{%- endif %}
"""

_TEMPLATES = {
    "bootstrap_table.j2": _TABLE,
    "graph.j2": _GRAPH,
    "js_script_imports.j2": "",
    "page_action_card.j2": "",
    "data_docs_custom_styles.css": _STYLES,
}


def graph_rows(spec: Any) -> list[dict[str, Any]]:
    """The data rows of a Vega-Lite spec (a dict, as GX passes it): its named dataset, else its inline values."""
    if not isinstance(spec, dict):
        return []
    data = spec.get("data") or {}
    datasets = spec.get("datasets") or {}
    rows = datasets.get(data.get("name")) or data.get("values") or next(iter(datasets.values()), [])
    # the values came from GX-escaped text (gx_frame): shown as they were, escaped once by the template
    return [{from_gx(k): from_gx(v) for k, v in r.items()} for r in rows if isinstance(r, dict)]


class _OfflineLoader(BaseLoader):
    """Our templates first, then GX's (through ``fallback``) with their remote assets removed."""

    def __init__(self, fallback: BaseLoader) -> None:
        self.fallback = fallback

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Any]:
        if template in _TEMPLATES:
            return _TEMPLATES[template], None, lambda: True
        if self.fallback is None:
            raise TemplateNotFound(template)
        source, filename, uptodate = self.fallback.get_source(environment, template)
        return offline_source(source), filename, uptodate


def _offline(env: Environment) -> None:
    env.loader = _OfflineLoader(env.loader)
    env.filters["graph_rows"] = graph_rows


_ENVIRONMENTS: dict[tuple[type, str | None, str | None], Environment] = {}


def _environment(view: DefaultJinjaView) -> Environment:
    """The offline Jinja environment of views like ``view``, shared: GX builds new views, each compiling its
    templates again, for every resource a checkpoint's ``UpdateDataDocsAction`` renders; views of one class and
    configuration render alike, so the first one's environment (and its compiled templates) serves them all."""
    key = (type(view), view.custom_styles_directory, view.custom_views_directory)
    if key not in _ENVIRONMENTS:
        _offline(view.env)
        _ENVIRONMENTS[key] = view.env
    return _ENVIRONMENTS[key]


class OfflinePageView(DefaultJinjaPageView):
    """GX's page view (expectation suites, validation results) rendered without network assets."""

    def __init__(self, custom_styles_directory: str | None = None, custom_views_directory: str | None = None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)
        self.env = _environment(self)


class OfflineIndexPageView(DefaultJinjaIndexPageView):
    """GX's site index view rendered without network assets."""

    def __init__(self, custom_styles_directory: str | None = None, custom_views_directory: str | None = None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)
        self.env = _environment(self)
