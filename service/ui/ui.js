// The explain page: POST /score with explain, then the ranked ads and a behaviour x ad heatmap.
// Written by hand, no dependencies: it loads nothing but this file, the stylesheet and /score.
"use strict";
const $ = (id) => document.getElementById(id);
const DEMO = { user: "1", candidates: [1, 2, 3, 5, 8, 13, 21, 34].map((i) => ({ item_id: i, category_id: i % 50 })) };
let last = null;

function rawId(text) {
  // The service tells 1 from "1": a whole number within JSON's safe range is sent as a number.
  const t = text.trim();
  return /^-?\d+$/.test(t) && Number.isSafeInteger(Number(t)) ? Number(t) : t;
}

function label(record) {
  const fields = Object.entries(record).filter(([k]) => k !== "ts" && k !== "weight" && k !== "influence");
  return fields.map(([k, v]) => `${k.replace(/_id$/, "")} ${v}`).join(" · ");
}

function fail(message) {
  $("status").textContent = message;
  $("status").className = "error";
}

async function rank(event) {
  if (event) event.preventDefault();
  let candidates;
  try {
    candidates = JSON.parse($("candidates").value);
  } catch (e) {
    return fail(`candidates: not JSON (${e.message})`);
  }
  const body = { user_id: rawId($("user").value), candidates, explain: true };
  if ($("top_k").value.trim()) body.top_k = Number($("top_k").value);
  $("status").textContent = "scoring…";
  $("status").className = "";
  let r;
  try {
    // The key stays in this tab (sessionStorage), sent as a bearer token with each request.
    const key = $("api_key").value.trim();
    sessionStorage.setItem("din-api-key", key);
    const headers = { "content-type": "application/json" };
    if (key) headers.authorization = `Bearer ${key}`;
    r = await fetch("/score", { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    return fail(`the service did not answer: ${e.message}`);
  }
  const answer = await r.json();
  if (!r.ok) {
    const detail = (answer.detail || []).map((d) => `${(d.loc || []).join(".")}: ${d.msg}`);
    return fail(`HTTP ${r.status}\n${detail.join("\n")}`);
  }
  $("status").textContent = "";
  last = answer;
  render(answer);
}

function extremes(item, history, sign, k = 3) {
  const order = item.influence.map((v, j) => [v, j]).filter(([v]) => sign * v > 0);
  order.sort((a, b) => sign * (b[0] - a[0]));
  return order.slice(0, k).map(([v, j]) => `${label(history[j])} (${points(v)})`);
}

function points(v) {
  // a change of CTR in percentage points, to two significant digits
  return `${v > 0 ? "+" : v < 0 ? "−" : ""}${Math.abs(v * 100).toPrecision(2)} pp`;
}

function render(answer) {
  const history = answer.history || [];
  $("result").hidden = false;
  $("summary").textContent = `model ${answer.model_version}; ${answer.history_length} behaviours` +
    (answer.degraded ? "; degraded: the behaviour store could not be read, so no history was used" : "");
  const rows = answer.items.map((item) => {
    const tr = document.createElement("tr");
    const cells = [item.rank, label(Object.fromEntries(Object.entries(item).filter(([k]) =>
      !["ctr", "rank", "behaviors", "attention", "influence", "explored"].includes(k)))),
      item.ctr.toFixed(4), extremes(item, history, 1).join("\n"), extremes(item, history, -1).join("\n")];
    cells.forEach((text, n) => {
      const td = document.createElement("td");
      td.textContent = text;
      td.className = n === 2 ? "num" : n === 3 ? "up" : n === 4 ? "down" : "";
      td.style.whiteSpace = "pre-line";
      tr.appendChild(td);
    });
    return tr;
  });
  $("ranked").tBodies[0].replaceChildren(...rows);
  heatmap(answer, history, $("colour").value);
}

function colour(v, max) {
  const a = max > 0 ? Math.min(Math.abs(v) / max, 1) : 0;
  const [r, g, b] = v >= 0 ? [179, 38, 30] : [31, 79, 179];
  const mix = (c) => Math.round(255 - a * (255 - c));
  return `rgb(${mix(r)},${mix(g)},${mix(b)})`;
}

function heatmap(answer, history, key) {
  const ns = "http://www.w3.org/2000/svg";  // the SVG namespace, not a request
  const items = answer.items, n = history.length, cell = 22, left = 210, top = 90;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", left + items.length * cell + 10);
  svg.setAttribute("height", top + n * cell + 10);
  const text = (x, y, s, rotate) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = s;
    if (rotate) t.setAttribute("transform", `rotate(-45 ${x} ${y})`);
    svg.appendChild(t);
  };
  let max = 0;
  for (const item of items) for (const v of item[key]) max = Math.max(max, Math.abs(v));
  items.forEach((item, c) => text(left + c * cell + 6, top - 6, `#${item.rank} ${item.item_id}`, true));
  for (let row = 0; row < n; row++) {
    const j = n - 1 - row;  // newest first
    text(4, top + row * cell + 15, label(history[j]));
    items.forEach((item, c) => {
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("class", "cell");
      rect.setAttribute("x", left + c * cell); rect.setAttribute("y", top + row * cell);
      rect.setAttribute("width", cell - 2); rect.setAttribute("height", cell - 2);
      rect.setAttribute("fill", colour(item[key][j], max));
      const tip = document.createElementNS(ns, "title");
      tip.textContent = `${label(history[j])} × ad ${item.item_id}: attention ${item.attention[j].toFixed(4)}, ` +
        `influence on the CTR ${points(item.influence[j])}`;
      rect.appendChild(tip);
      svg.appendChild(rect);
    });
  }
  $("heatmap").replaceChildren(svg);
}

function init() {
  const q = new URLSearchParams(location.search);
  $("user").value = q.get("user") || DEMO.user;
  $("candidates").value = q.get("candidates") || JSON.stringify(DEMO.candidates);
  if (q.has("top_k")) $("top_k").value = q.get("top_k");
  $("api_key").value = sessionStorage.getItem("din-api-key") || "";
  $("form").addEventListener("submit", rank);
  $("demo").addEventListener("click", () => {
    $("user").value = DEMO.user;
    $("candidates").value = JSON.stringify(DEMO.candidates);
    rank();
  });
  $("colour").addEventListener("change", () => last && heatmap(last, last.history || [], $("colour").value));
  if (q.has("user")) rank();
}

init();
