// Enhancements only: every form works without this file.
(function () {
  "use strict";
  // Copy buttons: shown only when the clipboard API is there to back them.
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    if (!navigator.clipboard) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.dataset.copy);
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    });
  });
  // Confirm destructive actions.
  document.querySelectorAll("[data-confirm]").forEach(function (element) {
    var form = element.tagName === "FORM" ? element : element.form;
    var check = function (event) { if (!window.confirm(element.dataset.confirm)) event.preventDefault(); };
    if (element.tagName === "FORM") form.addEventListener("submit", check); else element.addEventListener("click", check);
  });
  // Live refresh: re-fetch the page and swap the marked region, unless the user is typing or has ticked boxes.
  document.querySelectorAll("[data-refresh]").forEach(function (region, index) {
    var seconds = parseInt(region.dataset.refresh, 10) || 10;
    setInterval(function () {
      if (document.hidden || document.querySelector("input[type=checkbox]:checked") || region.contains(document.activeElement)) return;
      fetch(window.location.href, { credentials: "same-origin" }).then(function (response) {
        return response.ok ? response.text() : null;
      }).then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelectorAll("[data-refresh]")[index];
        if (fresh) region.innerHTML = fresh.innerHTML;
      }).catch(function () {});
    }, seconds * 1000);
  });
})();
