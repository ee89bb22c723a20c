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
