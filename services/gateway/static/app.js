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

  // htmx swaps only 2xx answers: a refused form (a stale CSRF token, say) would fail
  // silently, so the refusal and what to do are shown above it
  document.addEventListener("htmx:responseError", function (event) {
    var form = event.detail.elt;
    if (!form || form.tagName !== "FORM") {
      return;
    }
    var xhr = event.detail.xhr;
    var text = "The gateway refused this form (HTTP " + xhr.status + ").";
    try {
      var error = JSON.parse(xhr.responseText).error;
      text = error.message + (error.hint ? " — " + error.hint : "");
    } catch (e) {
      // not a JSON error body: keep the status line
    }
    var note = form.previousElementSibling;
    if (!note || !note.classList.contains("request-error")) {
      note = document.createElement("p");
      note.className = "error request-error";
      note.setAttribute("role", "alert");
      form.parentNode.insertBefore(note, form);
    }
    note.textContent = text;
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
