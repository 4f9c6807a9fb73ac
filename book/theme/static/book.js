// Search box of the cellpose_nb course site: every word of the query must occur in
// a record of the MyST search index (a page title, a section heading, a paragraph);
// records where the words occur as one phrase come first.  The index is a script
// (search-index.js), loaded on first use, so that search also works from file://.
(function () {
  "use strict";
  var root = window.BOOK_ROOT || "";
  var input, list, loading = null, timer = null;
  var MAX_RESULTS = 20;

  function loadIndex() {
    if (window.BOOK_SEARCH_INDEX) return Promise.resolve(window.BOOK_SEARCH_INDEX);
    if (!loading) {
      loading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = root + "_static/search-index.js";
        s.onload = function () { resolve(window.BOOK_SEARCH_INDEX || []); };
        s.onerror = function () { reject(new Error("search index not found")); };
        document.head.appendChild(s);
      });
    }
    return loading;
  }

  function headingOf(r) {
    var h = r.hierarchy || {}, page = h.lvl1 || "", section = "";
    for (var k = 6; k >= 2; k--) if (h["lvl" + k]) { section = h["lvl" + k]; break; }
    return { page: page, section: section };
  }

  function search(records, query) {
    var q = query.toLowerCase().trim().replace(/\s+/g, " ");
    var words = q.split(" ").filter(Boolean);
    if (!words.length) return [];
    var hits = [];
    records.forEach(function (r) {
      var h = headingOf(r);
      var text = (h.page + " " + h.section + " " + (r.content || "")).toLowerCase();
      for (var i = 0; i < words.length; i++) if (text.indexOf(words[i]) < 0) return;
      var score = (text.indexOf(q) >= 0 ? 10 : 0) + (r.type === "content" ? 0 : 2);
      hits.push({ record: r, score: score, heading: h });
    });
    hits.sort(function (a, b) { return b.score - a.score; });
    return hits.slice(0, MAX_RESULTS);
  }

  function snippet(content, query) {
    if (!content) return "";
    var words = query.toLowerCase().split(/\s+/).filter(Boolean);
    var at = content.toLowerCase().indexOf(words[0] || "");
    var start = Math.max(0, at - 60);
    return (start > 0 ? "… " : "") + content.slice(start, start + 180).replace(/\s+/g, " ") + " …";
  }

  function show(hits, query) {
    list.innerHTML = "";
    if (!hits.length) {
      var none = document.createElement("li");
      none.className = "search-none";
      none.textContent = "No results for “" + query + "”";
      list.appendChild(none);
    }
    hits.forEach(function (hit) {
      var li = document.createElement("li"), a = document.createElement("a");
      a.className = "search-result";
      a.href = root + hit.record.url;
      var title = document.createElement("span");
      title.className = "search-result-title";
      title.textContent = hit.heading.page + (hit.heading.section ? " › " + hit.heading.section : "");
      a.appendChild(title);
      var text = snippet(hit.record.content, query);
      if (text) {
        var p = document.createElement("span");
        p.className = "search-result-text";
        p.textContent = text;
        a.appendChild(p);
      }
      li.appendChild(a);
      list.appendChild(li);
    });
    list.hidden = false;
  }

  function run() {
    var query = input.value;
    if (!query.trim()) { list.hidden = true; return; }
    loadIndex().then(function (records) { show(search(records, query), query); },
                     function (err) { list.innerHTML = "<li class='search-none'>" + err.message + "</li>"; list.hidden = false; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    input = document.getElementById("book-search");
    list = document.getElementById("book-search-results");
    if (!input || !list) return;
    input.addEventListener("focus", function () { loadIndex().catch(function () {}); });
    input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 120); });
    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter") {
        var first = list.querySelector("a.search-result");
        if (first) window.location.href = first.href;
      } else if (e.key === "Escape") {
        list.hidden = true;
        input.blur();
      }
    });
    document.addEventListener("click", function (e) {
      if (!e.target.closest || !e.target.closest(".search")) list.hidden = true;
    });
    document.addEventListener("keydown", function (e) {  // "/" focuses the search box
      if (e.key === "/" && document.activeElement !== input) { e.preventDefault(); input.focus(); }
    });
  });
})();
