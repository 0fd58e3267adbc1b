// The pages' small behaviour, kept out of the HTML so that the Content-Security-Policy
// can refuse every inline script and inline style.
(function () {
  "use strict";

  // Bars get their width through the CSSOM, which the policy allows (a style="" attribute
  // it refuses).
  function drawBars(root) {
    root.querySelectorAll("[data-pct]").forEach(function (el) {
      var pct = Math.max(0, Math.min(100, parseFloat(el.dataset.pct) || 0));
      el.style.width = pct + "%";
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawBars(document); });
  // htmx:load fires for every element htmx puts into the page (live rows, swapped forms)
  document.addEventListener("htmx:load", function (event) { drawBars(event.target); });

  // The session's CSRF token (csrf.py): on every htmx request, and in every POST form that
  // was not rendered with it (rows pushed over SSE are shared by all browsers)
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if ((form.method || "").toLowerCase() !== "post" || form.elements.namedItem("csrf_token")) {
      return;
    }
    var field = document.createElement("input");
    field.type = "hidden";
    field.name = "csrf_token";
    field.value = csrfToken();
    form.appendChild(field);
  });

  // Forms that ask before they go: <form data-confirm="Decommission x?">
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);
})();
