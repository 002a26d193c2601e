// Live updates for the dashboard: pages marked `data-live` fetch themselves
// again every few seconds and swap in the new <main>, unless the reader has
// paused updates, is typing in a form, or has opened a <details>. Without
// JavaScript every page still works; it just does not refresh itself.
const PERIOD_MS = 3000;
let paused = sessionStorage.getItem("switchboard-live") === "paused";

function main() {
  return document.getElementById("main");
}

// A reader working inside the page (typing, or moving through it with the
// keyboard) keeps it as it is: replacing it would lose their place.
function busy(m) {
  const active = document.activeElement;
  return Boolean(active && active !== m && m.contains(active));
}

async function refresh() {
  const m = main();
  if (paused || !m || !m.hasAttribute("data-live") || document.hidden || busy(m)) return;
  let resp;
  try {
    resp = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
  } catch {
    return; // the hub is restarting; try again next time
  }
  if (resp.redirected || !resp.ok) {
    // Signed out or gone: show what the server says.
    location.reload();
    return;
  }
  const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
  const fresh = doc.getElementById("main");
  if (!fresh) return;
  // Keep <details> the reader opened open.
  const open = new Set([...m.querySelectorAll("details[open] > summary")].map((s) => s.textContent));
  if (fresh.innerHTML !== m.innerHTML) {
    m.innerHTML = fresh.innerHTML;
    m.querySelectorAll("details > summary").forEach((s) => {
      if (open.has(s.textContent)) s.parentElement.open = true;
    });
    if (!fresh.hasAttribute("data-live")) m.removeAttribute("data-live");
  }
  const stamp = document.getElementById("live-stamp");
  if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
}

function toggle() {
  const m = main();
  if (!m || !m.hasAttribute("data-live")) return;
  const header = document.querySelector(".top");
  const box = document.createElement("div");
  box.className = "live";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  const stamp = document.createElement("span");
  stamp.id = "live-stamp";
  stamp.setAttribute("aria-live", "off");
  const label = () => {
    button.textContent = paused ? "Resume live updates" : "Pause live updates";
    button.setAttribute("aria-pressed", String(paused));
  };
  button.addEventListener("click", () => {
    paused = !paused;
    sessionStorage.setItem("switchboard-live", paused ? "paused" : "live");
    label();
  });
  label();
  box.append(button, stamp);
  header.insertBefore(box, header.querySelector(".signout"));
}

toggle();
setInterval(refresh, PERIOD_MS);
