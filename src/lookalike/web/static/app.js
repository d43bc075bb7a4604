// lookalike's page: three views switched by the URL's hash (#search, #duplicates, #library).
import "./search.js";
import { status } from "./common.js";
import { showDuplicates } from "./duplicates.js";
import { showLibrary } from "./library.js";

const VIEWS = { search: null, duplicates: showDuplicates, library: showLibrary };

function route(event) {
  const wanted = location.hash.slice(1);
  const name = wanted in VIEWS ? wanted : "search";
  for (const view of Object.keys(VIEWS)) document.getElementById(`view-${view}`).hidden = view !== name;
  for (const link of document.querySelectorAll(".top nav a")) {
    if (link.hash === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · lookalike`;
  status("");
  // On a switch (not the first load), focus the view's heading so a screen reader says where it is.
  if (event) document.querySelector(`#view-${name} h1`).focus();
  VIEWS[name]?.();
}

addEventListener("hashchange", route);
route();
