// Render the math that pymdownx.arithmatex (generic mode) leaves in the page, with the KaTeX
// copy vendored under docs/assets/katex (no network at view time).
(function () {
  function render() {
    var opts = {throwOnError: false};
    document.querySelectorAll(".arithmatex").forEach(function (el) {
      var tex = el.textContent || el.innerText;
      var display = tex.startsWith("\\[");
      tex = tex.replace(/^\\[\[(]/, "").replace(/\\[\])]$/, "");
      opts.displayMode = display;
      katex.render(tex, el, opts);
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(render);  // mkdocs-material instant navigation
  } else {
    document.addEventListener("DOMContentLoaded", render);
  }
})();
