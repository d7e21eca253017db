/* Sortable result tables: click a column header of a table in a notebook's output to sort
 * its rows by that column (numbers as numbers, "–" and empty cells last); click again to
 * reverse. No library, no network: the book is read offline too. Registered in _config.yml
 * (sphinx.config.html_js_files). Tables whose body rows span several header cells are left
 * as they are. */
(function () {
  "use strict";

  function cellValue(cell) {
    var text = (cell ? cell.textContent : "").trim();
    var number = parseFloat(text.replace(/[,\u00a0\s]/g, "").replace(/^\+/, "").replace(/\u2212/g, "-"));
    return { text: text, number: isNaN(number) ? null : number, empty: text === "" || text === "\u2013" || text === "\u2014" };
  }

  function compare(a, b) {
    if (a.empty !== b.empty) { return a.empty ? 1 : -1; }
    if (a.number !== null && b.number !== null) { return a.number - b.number; }
    return a.text.localeCompare(b.text, undefined, { numeric: true });
  }

  function makeSortable(table) {
    var head = table.tHead;
    var body = table.tBodies[0];
    if (!head || !body || head.rows.length === 0 || body.rows.length < 2) { return; }
    var headers = head.rows[head.rows.length - 1].cells;
    var width = headers.length;
    for (var r = 0; r < body.rows.length; r++) {
      if (body.rows[r].cells.length !== width) { return; }
    }
    table.classList.add("fer-sortable");
    Array.prototype.forEach.call(headers, function (th, column) {
      th.title = "Sort by this column";
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (x, y) {
          var a = cellValue(x.cells[column]), b = cellValue(y.cells[column]);
          if (a.empty || b.empty) { return compare(a, b); }
          return ascending ? compare(a, b) : compare(b, a);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }

  function init() {
    document.querySelectorAll(".cell_output table, .output table").forEach(makeSortable);
    var style = document.createElement("style");
    style.textContent = "table.fer-sortable thead th { cursor: pointer; }" +
      "table.fer-sortable thead th[aria-sort=ascending]::after { content: ' \\25B2'; }" +
      "table.fer-sortable thead th[aria-sort=descending]::after { content: ' \\25BC'; }";
    document.head.appendChild(style);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
