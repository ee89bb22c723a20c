// stemtrace's only script of its own: copy buttons. Loaded as a file so the
// Content-Security-Policy can forbid inline scripts.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button || !navigator.clipboard) return;
  navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
    button.classList.add("copied");
    setTimeout(function () { button.classList.remove("copied"); }, 1200);
  });
});

// The problems count in the navigation. A page with a live stream of its own gets the
// count on that stream (a browser holds few connections per server: one stream a page),
// so the navigation listens to whichever stream htmx opens; a page without one opens
// the count's own stream on the navigation (its sse-swap fills the count there).
(function () {
  var heard = new WeakSet();
  document.addEventListener("htmx:sseOpen", function (event) {
    var source = event.detail && event.detail.source;
    if (!source || heard.has(source)) return;
    heard.add(source);
    source.addEventListener("problems", function (message) {
      var count = document.getElementById("problem-count");
      if (count && /^[0-9]+$/.test(message.data)) count.textContent = message.data;
    });
  });
})();
