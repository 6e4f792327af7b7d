// The book on a phone or a tablet (Jupyter Book 1 loads every .js file in _static/ on every page).
//
// Tables: a table wider than the column (or of four columns or more in a phone's column) is shown as
// one block per row, each cell labelled with its column's header ("verdict: holds"), so that no column
// is cut off or hidden behind a sideways scroll; it turns back into a table when there is room again.
// Figures: a figure narrower on screen than its image (the column is narrower than the figure was
// drawn for) links to the full-size image, so that a tap opens it with labels a reader can read.
(() => {
  "use strict";

  const NARROW = 560;  // px: a phone's column
  const MANY = 4;  // columns that a phone's column cannot hold side by side
  const article = () => document.querySelector("article.bd-article") || document.querySelector("main");

  function labelCells(table) {
    const headRow = table.tHead ? table.tHead.rows[0] : null;
    if (!headRow) return false;
    const heads = [...headRow.cells].map(cell => cell.innerText.replace(/\s+/g, " ").trim());
    for (const body of table.tBodies) {
      for (const row of body.rows) {
        [...row.cells].forEach((cell, i) => {
          if (heads[i]) cell.setAttribute("data-label", heads[i]);
        });
      }
    }
    return true;
  }

  function fitTables() {
    const root = article();
    if (!root) return;
    for (const table of root.querySelectorAll("table")) {
      if (!table.hasAttribute("data-book-table")) {
        table.setAttribute("data-book-table", labelCells(table) ? "labelled" : "plain");
      }
      if (table.getAttribute("data-book-table") !== "labelled") continue;
      table.classList.remove("book-reflow");
      const box = table.parentElement;
      const room = box ? box.clientWidth : root.clientWidth;
      const columns = table.tHead.rows[0].cells.length;
      // too wide for the column, or so many columns in a phone's column that each is a word wide
      if (table.scrollWidth > room + 1 || (room < NARROW && columns >= MANY)) table.classList.add("book-reflow");
    }
  }

  function linkFigures() {
    const root = article();
    if (!root) return;
    for (const img of root.querySelectorAll("img")) {
      if (img.closest("a")) continue;
      const link = document.createElement("a");
      link.href = img.getAttribute("src");
      link.className = "book-enlarge";
      link.title = "Open the figure at full size";
      img.replaceWith(link);
      link.appendChild(img);
      img.addEventListener("load", markShrunk);
    }
  }

  // A figure shown at its own size needs no hint; a shrunk one says that a tap enlarges it.
  function markShrunk() {
    const root = article();
    if (!root) return;
    for (const link of root.querySelectorAll("a.book-enlarge")) {
      const img = link.querySelector("img");
      if (!img || !img.naturalWidth) continue;
      // shrunk by a tenth or more: its labels are then smaller than the figure was drawn for
      link.classList.toggle("book-shrunk", img.getBoundingClientRect().width < 0.9 * img.naturalWidth);
    }
  }

  function layout() {
    fitTables();
    markShrunk();
  }

  function start() {
    linkFigures();
    layout();
    window.addEventListener("load", layout);
    let pending = null;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(layout);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
