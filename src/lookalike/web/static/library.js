// The library view: counts, index state and models per engine, the background backlog, disk use.
import { api, el, formatBytes, formatNumber, status } from "./common.js";

const view = document.getElementById("view-library");
const REFRESH_MS = 5000;  // while the background pass has work: watch it go down
let again = null;

export async function showLibrary() {
  clearTimeout(again);
  let stats, jobs;
  try {
    [stats, jobs] = await Promise.all([api("stats"), api("jobs")]);
  } catch (error) {
    status(error.message, "error");
    return;
  }
  document.getElementById("stat-images").textContent = formatNumber(stats.images);
  paintJobs(jobs);
  paintDisk(stats);
  paintEngines(stats.engines);
  document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  if (Object.values(jobs).some((job) => job.backlog > 0)) {
    again = setTimeout(() => view.hidden || showLibrary(), REFRESH_MS);
  }
}

function duration(seconds) {
  if (seconds == null) return "unknown";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function paintJobs(jobs) {
  const busy = Object.entries(jobs).filter(([, job]) => job.backlog > 0);
  document.getElementById("stat-jobs").replaceChildren(busy.length
    ? el("ul", { className: "plain" }, ...busy.map(([engine, job]) => el("li", {},
      el("b", {}, engine), `: ${formatNumber(job.backlog)} to do · ${(job.per_second ?? 0).toFixed(1)}/s · ${duration(job.eta_seconds)} left`)))
    : el("p", { className: "big idle" }, "Idle"));
}

function paintDisk(stats) {
  const disk = stats.disk_bytes || { store: stats.store_bytes };
  document.getElementById("stat-disk").replaceChildren(...Object.entries(disk).flatMap(([part, bytes]) => [
    el("dt", {}, part), el("dd", {}, formatBytes(bytes))]));
}

// An index is trained once it has learnt from the features (a compressed or whitened form); flat before.
const trained = (index) => Boolean(index.trained_on || index.compressed || index.whitened_dims);
const SHOWN = ["features", "indexed", "model", "trained_on", "compressed", "whitened_dims", "milvus"];
// Milvus names the index it builds per segment (HNSW, IVF_SQ8, FLAT).
const state = (index) => index.milvus ? `Milvus ${index.milvus}` : trained(index) ? "trained" : "flat";

function paintEngines(engines) {
  document.querySelector("#stat-engines tbody").replaceChildren(...Object.entries(engines).map(([engine, index]) => {
    // Whatever else the index reports (descriptors, words) goes under its state.
    const more = Object.entries(index).filter(([key, value]) => !SHOWN.includes(key) && value != null)
      .map(([key, value]) => `${typeof value === "number" ? formatNumber(value) : value} ${key.replaceAll("_", " ")}`)
      .join(" · ");
    return el("tr", { "data-engine": engine },
      el("th", { scope: "row" }, engine),
      el("td", { className: "num" }, formatNumber(index.features)),
      el("td", { className: "num" }, formatNumber(index.indexed)),
      el("td", {}, el("span", { className: trained(index) ? "state trained" : "state" }, state(index)),
        more && el("span", { className: "muted small block" }, more)),
      el("td", { className: "model" }, index.model || "–"));
  }));
}

document.getElementById("refresh").addEventListener("click", showLibrary);
