/* keepreading: <script src="{{ base_url }}/embed.js" data-keepreading></script> places the signup form here. */
(function () {
  "use strict";
  var base = {{ base_url|tojson }};
  var origin = {{ origin|tojson }};
  var tag = document.currentScript;
  if (!tag) { return; }
  var frame = document.createElement("iframe");
  var source = encodeURIComponent(location.href.slice(0, 500));
  frame.src = base + "/embed?source=" + source;
  frame.title = "Subscribe by email";
  frame.setAttribute("data-keepreading-frame", "");
  frame.style.cssText = "border:0;width:100%;max-width:36rem;height:11rem;display:block;";
  tag.parentNode.insertBefore(frame, tag.nextSibling);
  window.addEventListener("message", function (event) {
    var data = event.data;
    if (event.origin !== origin || event.source !== frame.contentWindow || !data || data.keepreading !== "height") { return; }
    frame.style.height = Math.min(Math.max(Number(data.height) || 0, 80), 2000) + "px";
  });
})();
