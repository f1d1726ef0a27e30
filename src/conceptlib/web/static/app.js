// conceptlib web: copy buttons. No inline script anywhere (the page's CSP forbids it);
// the text to copy is in each button's data-copy attribute, set by the server.
"use strict";

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  // Fallback for a non-secure context (a remote --host over plain HTTP).
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  copyText(button.dataset.copy || "").then(
    () => { button.textContent = "copied"; button.classList.add("done"); },
    () => { button.textContent = "copy failed"; }
  ).finally(() => {
    setTimeout(() => { button.textContent = label; button.classList.remove("done"); }, 1500);
  });
});
