/* keepreading: the subscribe invitation of "popup" posts, a native <dialog>.

   It opens once the reader has scrolled a share of the article, or spent a while on the page, whichever comes
   first (the publisher's settings, in the dialog's data attributes). "Continue reading", Esc or a subscription
   close it where the reader was: the scroll position is kept while it is open and put back after, and focus
   returns to where it was without scrolling. While open, the page behind does not scroll and Tab stays inside.
   Once closed it stays closed in this browser for the set number of days, on every article (localStorage).
   Without this script the article simply ends with the same form inline. */
(function () {
  "use strict";

  var dialog = document.getElementById("invite");
  var article = document.querySelector("article.post");
  if (!dialog || !article || typeof dialog.showModal !== "function") {
    return;
  }
  var KEY = "keepreading.invite.closedUntil";
  var DAY = 24 * 60 * 60 * 1000;
  var share = Number(dialog.getAttribute("data-scroll-percent")) / 100;
  var delay = Number(dialog.getAttribute("data-delay-seconds"));
  var snoozeDays = Number(dialog.getAttribute("data-snooze-days"));
  var root = document.documentElement;
  var form = dialog.querySelector("form");
  var answer = dialog.querySelector(".invite-answer");
  var timer = null;
  var shown = false;
  var kept = {x: 0, y: 0};
  var returnTo = null;

  function closedUntil() {
    try {
      return Number(window.localStorage.getItem(KEY)) || 0;
    } catch (blocked) {  // storage refused (a privacy setting): the dialog may show once per page
      return 0;
    }
  }

  function snooze() {
    try {
      window.localStorage.setItem(KEY, String(Date.now() + snoozeDays * DAY));
    } catch (blocked) { /* nothing to keep it in */ }
  }

  function stopWatching() {
    window.removeEventListener("scroll", onScroll);
    if (timer !== null) {
      window.clearTimeout(timer);
      timer = null;
    }
  }

  // How far into the article the reader has got: the share of it above the bottom of the window.
  function reached() {
    var box = article.getBoundingClientRect();
    return box.height > 0 ? (window.innerHeight - box.top) / box.height : 1;
  }

  function onScroll() {
    if (reached() >= share) {
      open();
    }
  }

  function keepPosition() {
    if (window.scrollX !== kept.x || window.scrollY !== kept.y) {
      window.scrollTo({left: kept.x, top: kept.y, behavior: "instant"});
    }
  }

  function open() {
    stopWatching();
    if (shown || closedUntil() > Date.now()) {
      return;
    }
    shown = true;
    kept = {x: window.scrollX, y: window.scrollY};
    returnTo = document.activeElement;
    root.classList.add("invite-open");  // the page behind stops scrolling (style.css)
    dialog.showModal();
    dialog.focus({preventScroll: true});  // the dialog itself: its title is read out, no keyboard pops up on phones
    keepPosition();
  }

  function onClose() {
    snooze();
    root.classList.remove("invite-open");
    keepPosition();
    if (returnTo && returnTo !== document.body && document.contains(returnTo) && typeof returnTo.focus === "function") {
      returnTo.focus({preventScroll: true});
    }
    keepPosition();
  }

  function focusable() {
    return Array.prototype.filter.call(
      dialog.querySelectorAll("a[href], button, input:not([type=hidden]), [tabindex]:not([tabindex='-1'])"),
      function (element) {
        return !element.disabled && element.tabIndex >= 0 && element.getClientRects().length > 0;
      });
  }

  // Tab and Shift+Tab go round the dialog's own controls, never out to the page or the browser.
  function trapTab(event) {
    if (event.key !== "Tab") {
      return;
    }
    var controls = focusable();
    if (controls.length === 0) {
      event.preventDefault();
      return;
    }
    var first = controls[0];
    var last = controls[controls.length - 1];
    var at = document.activeElement;
    if (event.shiftKey && (at === first || at === dialog || controls.indexOf(at) < 0)) {
      event.preventDefault();
      last.focus({preventScroll: true});
    } else if (!event.shiftKey && (at === last || controls.indexOf(at) < 0)) {
      event.preventDefault();
      first.focus({preventScroll: true});
    }
  }

  function say(message, failed) {
    answer.textContent = message;
    answer.classList.toggle("error", failed);
  }

  // Subscribing in place: the same endpoint, limits and honeypot as the form, answered as JSON.
  function subscribe(event) {
    event.preventDefault();
    var email = form.querySelector("input[name=email]");
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    say("Sending…", false);
    window.fetch(form.action, {
      method: "POST",
      headers: {"Accept": "application/json"},
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin"
    }).then(function (response) {
      return response.json().then(function (body) {
        return {ok: response.ok, body: body};
      });
    }).then(function (result) {
      if (result.ok) {
        form.hidden = true;
        say(result.body.message, false);
        dialog.querySelector("[data-close]").focus({preventScroll: true});
      } else {
        button.disabled = false;
        email.setAttribute("aria-invalid", "true");
        say(result.body.message || "That did not work. Please try again.", true);
        email.focus({preventScroll: true});
      }
    }).catch(function () {
      button.disabled = false;
      say("We could not reach the server. Please try again in a moment.", true);
    });
  }

  if (closedUntil() > Date.now()) {
    return;
  }
  dialog.setAttribute("tabindex", "-1");
  dialog.addEventListener("close", onClose);
  dialog.addEventListener("keydown", trapTab);
  dialog.querySelector("[data-close]").addEventListener("click", function () {
    dialog.close();
  });
  form.addEventListener("submit", subscribe);
  window.addEventListener("scroll", onScroll, {passive: true});
  if (delay > 0) {
    timer = window.setTimeout(open, delay * 1000);
  }
}());
