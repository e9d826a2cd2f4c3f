"""The inline style and filter script of the HTML reports, and the policy that keeps them offline.

The script filters the answers table by family and by "runs disagree" (rows carry
data-family and data-disagree) and says how many rows are shown.
"""

from __future__ import annotations

# Nothing may be loaded: images are data: URIs, style and script are inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  color: #1d2430; margin: 24px auto; max-width: 1200px; padding: 0 16px; font-size: 14px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
.note { background: #fff4e5; border-left: 4px solid #e08a00; padding: 8px 12px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #d9dde3; padding: 5px 8px; text-align: left;
  vertical-align: top; }
th { background: #f3f5f8; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.side { display: flex; flex-wrap: wrap; gap: 12px 32px; align-items: flex-start; }
#plot { display: block; max-width: 100%; max-height: 420px; }
svg.ci line { stroke: #2f6fde; stroke-width: 2; } svg.ci circle { fill: #2f6fde; }
#filters { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; margin: 10px 0; }
#shown { color: #687385; }
.how { color: #687385; }
#answers td { max-width: 260px; white-space: pre-wrap; overflow-wrap: anywhere; }
#answers td small { display: block; color: #687385; }
.thumb { width: 72px; image-rendering: pixelated; border-radius: 3px; }
.boxes { display: block; margin-top: 4px; width: 72px; image-rendering: pixelated; border-radius: 3px; }
td.right { background: #ecf7ee; } td.wrong { background: #fdecea; }
td.missing { color: #687385; }
.mark { display: block; font-size: 12px; color: #687385; margin-top: 3px; }
.ctl { font: 12px ui-monospace, Menlo, Consolas, monospace; color: #7a4b00; background: #fff4e5;
  border-radius: 3px; padding: 0 2px; white-space: nowrap; }
@media (max-width: 700px) {
  body { margin: 12px auto; padding: 0 10px; }
  /* a wide table scrolls in its own box; the page keeps the screen's width */
  table { display: block; overflow-x: auto; max-width: 100%; }
  #answers th, #answers td { min-width: 7em; }
  #answers th:first-child, #answers td:first-child { min-width: 0; }
}
"""

SCRIPT = """
(function () {
  var family = document.getElementById("family");
  if (!family) return;
  var disagree = document.getElementById("disagree");
  var shown = document.getElementById("shown");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#answers tbody tr"));
  function apply() {
    var f = family.value, d = disagree && disagree.checked, n = 0;
    rows.forEach(function (tr) {
      var ok = (!f || tr.dataset.family === f) && (!d || tr.dataset.disagree === "1");
      tr.hidden = !ok;
      if (ok) n += 1;
    });
    shown.textContent = n + " of " + rows.length + " items shown";
  }
  family.addEventListener("change", apply);
  if (disagree) disagree.addEventListener("change", apply);
  apply();
})();
"""
