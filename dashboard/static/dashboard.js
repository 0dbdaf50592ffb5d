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
  // Confirm destructive actions: a form's or its submit button's data-confirm (data-confirm-if: only
  // when that checkbox of the form is ticked). Delegated, so forms a live refresh brings are covered.
  document.addEventListener("submit", function (event) {
    var form = event.target, button = event.submitter;
    var element = button && button.dataset.confirm ? button : (form.dataset.confirm ? form : null);
    if (!element) return;
    var only = element.dataset.confirmIf;
    if (only && !(form.elements[only] && form.elements[only].checked)) return;
    if (!window.confirm(element.dataset.confirm)) event.preventDefault();
  });
  // "Select all": ticks or clears the boxes of that name in its form (hidden without this file).
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    all.hidden = false;
    all.addEventListener("change", function () {
      all.form.querySelectorAll('input[name="' + all.dataset.selectAll + '"]').forEach(function (box) { box.checked = all.checked; });
    });
  });
  // Times in the browser's own time zone (without this file the page shows them in UTC, marked so).
  var localTimes = function (root) {
    root.querySelectorAll("time[datetime]").forEach(function (time) {
      var at = new Date(time.getAttribute("datetime"));
      if (isNaN(at)) return;
      time.textContent = at.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
      });
    });
  };
  localTimes(document);
  // After a refused submit, the first field at fault has the focus (a screen reader reads its error).
  var invalid = document.querySelector("[aria-invalid=true]");
  if (invalid) invalid.focus();
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
        if (!fresh) return;
        region.innerHTML = fresh.innerHTML;
        localTimes(region);
      }).catch(function () {});
    }, seconds * 1000);
  });
})();
