// Entry point: sign-in, and the hash router that shows one view at a time.
import { AuthError, get, setApiKey } from "/dashboard/api.js";
import { failed, flash } from "/dashboard/ui.js";
import { compareView, dataView, exportView, jobView, jobsView, newJobView } from "/dashboard/views.js";
import { playView } from "/dashboard/play.js";

const routes = { data: dataView, new: newJobView, jobs: jobsView, job: jobView, compare: compareView,
                 export: exportView, play: playView };
let stopCurrent = null; // a view that polls returns its stop function

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const [name, arg] = path.split("/");
  return { name: routes[name] ? name : "data", arg: arg ? decodeURIComponent(arg) : null,
           params: new URLSearchParams(query) };
}

async function show() {
  if (stopCurrent) { stopCurrent(); stopCurrent = null; }
  flash("");
  const { name, arg, params } = parseHash();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#${name}`);
  }
  const view = document.getElementById("view");
  view.replaceChildren();
  view.dataset.view = name;
  try {
    stopCurrent = (await routes[name](view, arg, params)) || null;
  } catch (err) {
    failed(err);
  }
}

function askKey(reason) {
  const dialog = document.getElementById("login");
  document.getElementById("login-error").textContent = reason && sessionStorage.length ? reason : "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("login-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  setApiKey(document.getElementById("login-key").value.trim());
  try {
    await get("/v1/dashboard/info");
  } catch (err) {
    if (err instanceof AuthError) {
      setApiKey("");
      document.getElementById("login-error").textContent = "That key was refused; try again.";
      return;
    }
  }
  document.getElementById("login").close();
  document.getElementById("logout").hidden = false;
  show();
}

async function start() {
  document.getElementById("login-form").addEventListener("submit", signIn);
  document.getElementById("logout").addEventListener("click", () => { setApiKey(""); location.reload(); });
  window.addEventListener("hashchange", show);
  window.addEventListener("tunecraft:auth", (e) => askKey(e.detail));
  try {
    await get("/v1/dashboard/info");
    document.getElementById("logout").hidden = !sessionStorage.length;
  } catch (err) {
    if (err instanceof AuthError) return askKey("");
  }
  show();
}

start();
