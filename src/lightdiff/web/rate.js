// Blind rating page: asks the server for the next task, shows it, sends the answer. Plain JS, no CDN.
// URLs are relative so the page works wherever the rating routes are mounted.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;  // {token, mode}
let busy = false;

async function post(path, body) {
  const res = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                 body: JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) throw new Error((data.error && (data.error.message + " " + data.error.hint)) || res.statusText);
  return data;
}

function show(id, visible) { $(id).classList.toggle("hidden", !visible); }

async function next() {
  const rater = $("rater").value.trim();
  const mode = $("mode").value;
  const task = await post("api/next", {rater, mode});
  $("status").textContent = `${task.answered} of ${task.total} done`;
  if (task.done) {
    current = null;
    show("task", false);
    $("status").textContent = `All ${task.total} done. Thank you!`;
    document.body.dataset.state = "done";
    return;
  }
  current = {token: task.token, mode: task.mode};
  $("prompt").textContent = task.prompt;
  show("pair", task.mode === "pair");
  show("tie-row", task.mode === "pair");
  show("single", task.mode === "score");
  const loads = [];
  const load = (img, side) => {
    loads.push(new Promise((ok) => { img.onload = ok; img.onerror = ok; }));
    img.src = `api/image/${encodeURIComponent(task.token)}/${side}`;
  };
  if (task.mode === "pair") {
    load($("left-img"), "left");
    load($("right-img"), "right");
  } else {
    load($("single-img"), "left");
  }
  await Promise.all(loads);
  document.body.dataset.token = task.token;  // lets a test wait for the next task
  document.body.dataset.state = "ready";
}

async function answer(body) {
  if (!current || busy) return;
  busy = true;
  document.body.dataset.state = "sending";
  try {
    await post("api/answer", {token: current.token, ...body});
    await next();
  } catch (e) {
    $("status").textContent = "Error: " + e.message;
  } finally {
    busy = false;
  }
}

$("start").addEventListener("click", async () => {
  if (!$("rater").value.trim()) { $("status").textContent = "Type your rater id first."; return; }
  localStorage.setItem("lightdiff-rater", $("rater").value.trim());
  show("login", false);
  show("task", true);
  try { await next(); } catch (e) { $("status").textContent = "Error: " + e.message; }
});
$("choose-left").addEventListener("click", () => answer({choice: "left"}));
$("choose-right").addEventListener("click", () => answer({choice: "right"}));
$("choose-tie").addEventListener("click", () => answer({choice: "tie"}));
for (let s = 1; s <= 10; s++) {
  const b = document.createElement("button");
  b.textContent = String(s);
  b.dataset.score = String(s);
  b.addEventListener("click", () => answer({score: s}));
  $("scores").appendChild(b);
}
document.addEventListener("keydown", (e) => {
  if (!current || current.mode !== "pair") return;
  if (e.key === "ArrowLeft") answer({choice: "left"});
  if (e.key === "ArrowRight") answer({choice: "right"});
  if (e.key === "ArrowDown" || e.key === "=") answer({choice: "tie"});
});
$("rater").value = localStorage.getItem("lightdiff-rater") || "";
