"""Great Expectations Data Docs that render offline and inside MLflow's artifact viewer.

GX writes pages that load Bootstrap, jQuery, Popper, bootstrap-table, Font Awesome, Vega and
a date picker from CDNs (great_expectations/render/view/templates/js_script_imports.j2,
page.j2, index_page.j2). Without a network they render unstyled, and the index page, whose
tables bootstrap-table fills from data in a script, is blank. MLflow's artifact viewer shows
an HTML artifact from a ``blob:`` URL in a sandboxed iframe, where a relative path resolves
to nothing, so the assets are put *into* each page rather than beside it:

* Bootstrap 4's CSS and its JS bundle (Popper included) from XStatic-Bootstrap, and jQuery
  from XStatic-jQuery (both pinned in pyproject.toml): the versions GX's markup is written for;
* the few Font Awesome icons a page uses (pass and fail marks) as CSS masks of Font
  Awesome's own SVGs, from XStatic-Font-Awesome, instead of 150 KB of web font per page;
* bootstrap-table, which no PyPI package ships, gives way to ``TABLE_SCRIPT``: it draws the
  rows GX hands to bootstrap-table as a plain sorted table (no search or filter controls);
* Vega, the date picker, bootstrap-table's CSS and the dark theme are left out: the manifest
  suites draw no charts, and the filters they serve are gone with bootstrap-table;
* the GX logo, fetched from the web, and the favicon come from the site's own
  ``static/images`` as data URIs, and CSS ``url()``s pointing at the web are dropped.

Links between pages stay relative: they work from the folder (offline) and, in MLflow, each
page is opened on its own from the run's artifact list.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

SCRIPT_TAG = re.compile(r'<script\b[^>]*\bsrc="(https?://[^"]+)"[^>]*>\s*</script>', re.I)
LINK_TAG = re.compile(r'<link\b[^>]*\bhref="(https?://[^"]+)"[^>]*>', re.I)
REMOTE_IMG = re.compile(r'(<img\b[^>]*?\bsrc=")(https?://[^"]+)(")', re.I | re.S)
ICON_LINK = re.compile(r'(<link\b[^>]*\brel="[^"]*icon"[^>]*\bhref=")([^"]+)(")', re.I)
REMOTE_CSS_URL = re.compile(r"url\(\s*['\"]?https?://[^)]*\)", re.I)
SOURCE_MAP = re.compile(r"/[*/]# sourceMappingURL=\S+(\s*\*/)?")
ICON_CLASS = re.compile(r"\bfa-([a-z0-9]+(?:-[a-z0-9]+)*)")

# bootstrap-table's part that GX's pages use: the columns and rows it is given, drawn once.
TABLE_SCRIPT = """
(function ($) {
  function cell(value) { return value === undefined || value === null ? "" : String(value); }
  function sortRows(rows, options) {
    var by = options.sortName;
    var column = (options.columns || []).find(function (c) { return c.field === by; });
    if (!column) { return rows; }
    var key = column.sortName || column.field, sign = options.sortOrder === "desc" ? -1 : 1;
    return rows.slice().sort(function (a, b) {
      var x = a[key], y = b[key];
      if (typeof x === "number" && typeof y === "number") { return sign * (x - y); }
      return sign * cell(x).localeCompare(cell(y));
    });
  }
  $.fn.bootstrapTable = function (options) {
    if (typeof options !== "object") { return this; }  // clearFilterControl, resetSearch
    if (options.toolbar) { $(options.toolbar).remove(); }  // its buttons clear filters
    var table = this, columns = options.columns || [];
    var attributes = window[options.rowAttributes], head = $("<tr>"), body = $("<tbody>");
    columns.forEach(function (c) { head.append($("<th>").text(c.title || "")); });
    sortRows(options.data || [], options).forEach(function (row, index) {
      var tr = $("<tr>");
      columns.forEach(function (c) {
        var td = $("<td>").html(cell(row[c.field]));
        if (c.align) { td.addClass("text-" + c.align); }
        tr.append(td);
      });
      if (typeof attributes === "function") {
        tr.attr(attributes(row, index)).css("cursor", "pointer").on("click", function () {
          table.trigger("click-row.bs.table", [row, tr]);
        });
      }
      body.append(tr);
    });
    return this.empty().append($("<thead>").append(head), body);
  };
})(jQuery);
"""

ICON_STYLE = (
    ".fas,.far,.fa{display:inline-block;width:1em;height:1em;vertical-align:-.125em;"
    "background-color:currentColor;-webkit-mask:var(--tlp-icon) center/contain no-repeat;"
    "mask:var(--tlp-icon) center/contain no-repeat}"
)


def _xstatic_dir(module: str) -> Path:
    """The data folder of an XStatic package (``xstatic.pkg.<module>.BASE_DIR``)."""
    import importlib

    return Path(importlib.import_module(f"xstatic.pkg.{module}").BASE_DIR)


@functools.cache
def _text(module: str, relative: str) -> str:
    return SOURCE_MAP.sub("", (_xstatic_dir(module) / relative).read_text(encoding="utf-8"))


def _script(source: str) -> str:
    return "<script>" + source.replace("</script", "<\\/script") + "</script>"


def _style(css: str) -> str:
    return "<style>" + css.replace("</style", "<\\/style") + "</style>"


@functools.cache
def _icon_aliases() -> dict[str, str]:
    """Font Awesome 4/5 names GX writes (``check-circle``) -> the 6.x file (``circle-check``)."""
    icons = json.loads((_xstatic_dir("font_awesome") / "metadata" / "icons.json").read_text())
    return {
        old: name
        for name, icon in icons.items()
        for old in icon.get("aliases", {}).get("names", [])
    }


def _icon_svg(name: str) -> Path | None:
    svgs = _xstatic_dir("font_awesome") / "svgs"
    for candidate in (name, _icon_aliases().get(name)):
        for style in ("solid", "regular"):
            if candidate and (svgs / style / f"{candidate}.svg").is_file():
                return svgs / style / f"{candidate}.svg"
    return None


def icon_css(html: str) -> str:
    """CSS drawing every ``fa-<name>`` icon in ``html`` with Font Awesome's SVG as a mask (so
    it takes the text colour: green pass, red fail)."""
    rules = [ICON_STYLE]
    for name in sorted(set(ICON_CLASS.findall(html))):
        svg = _icon_svg(name)
        if svg is not None:
            data = base64.b64encode(svg.read_bytes()).decode()
            rules.append(f'.fa-{name}{{--tlp-icon:url("data:image/svg+xml;base64,{data}")}}')
    return "".join(rules)


def _replacement(url: str, html: str) -> tuple[str, str]:
    """(asset name, inline tag) standing in for a CDN ``url``; ("", "") drops it."""
    name = url.lower().split("?")[0]
    if "jquery" in name:
        return "jquery", _script(_text("jquery", "jquery.min.js"))
    if "bootstrap-table" in name:
        if "filter-control" in name or name.endswith(".css"):
            return "", ""
        return "table", _script(TABLE_SCRIPT)
    if "font-awesome" in name:
        return "icons", _style(icon_css(html))
    if "datepicker" in name or "bootstrap-dark" in name or "bootstrap-prefers-dark" in name:
        return "", ""
    if "bootstrap" in name and name.endswith(".css"):
        return "bootstrap.css", _style(_text("bootstrap", "css/bootstrap.min.css"))
    if ("bootstrap" in name and name.endswith(".js")) or "popper" in name:
        return "bootstrap.js", _script(_text("bootstrap", "js/bootstrap.bundle.min.js"))
    return "", ""  # vega, vega-lite, vega-embed, anything new: nothing loads from the web


def _local_image(docs_dir: Path, url: str) -> str:
    """A data URI of the site's own copy of an image (the GX logo, the favicon) named by
    ``url`` (its file name is what counts), else an empty src."""
    import mimetypes

    found = docs_dir / "static" / "images" / url.split("?")[0].rsplit("/", 1)[-1]
    if not found.is_file():
        return ""
    kind = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(found.read_bytes()).decode()}"


def self_contained(html: str, docs_dir: Path) -> str:
    """One page with every web asset inlined from the packages, or dropped."""
    inlined: set[str] = set()

    def swap(match: re.Match) -> str:
        asset, tag = _replacement(match.group(1), html)
        if not asset or asset in inlined:
            return ""
        inlined.add(asset)
        return tag

    html = LINK_TAG.sub(lambda m: swap(m) if "stylesheet" in m.group(0).lower() else "", html)
    html = SCRIPT_TAG.sub(swap, html)
    html = REMOTE_IMG.sub(lambda m: m.group(1) + _local_image(docs_dir, m.group(2)) + m[3], html)
    # the favicon too: GX links it one folder short from the validation pages
    html = ICON_LINK.sub(lambda m: m.group(1) + _local_image(docs_dir, m.group(2)) + m[3], html)
    return REMOTE_CSS_URL.sub("none", html)


def make_self_contained(docs_dir: Path) -> list[Path]:
    """Rewrite every page of a Data Docs site in place; returns the pages."""
    pages = sorted(docs_dir.rglob("*.html"))
    for page in pages:
        page.write_text(self_contained(page.read_text(encoding="utf-8"), docs_dir), "utf-8")
    log.debug("data docs: %d pages made self-contained", len(pages))
    return pages
