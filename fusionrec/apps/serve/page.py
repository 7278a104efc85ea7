"""The page at ``/``: a user's live list, the reason for each item, and the current fusion weights.

One self-contained HTML file (no external scripts or styles): it calls the API itself, so it needs the same key
(typed into the page and kept in the browser's localStorage, sent as ``X-API-Key``), and refreshes every two
seconds. ``/?user=u42`` opens it on a user.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fusionrec: live recommendations</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d232a; max-width: 68rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .8rem; }
  h2 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; }
  input { font: inherit; padding: .25rem .4rem; }
  table { border-collapse: collapse; width: 100%; margin-top: .4rem; }
  th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid #dde2e7; vertical-align: top; }
  th { background: #f2f4f6; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .bar { display: inline-block; height: .7rem; background: #3b82c4; margin-right: .3rem; vertical-align: middle; }
  .muted { color: #66707a; }
  .error { color: #b42318; }
  .tag { display: inline-block; padding: 0 .35rem; border-radius: .25rem; background: #e8eef5; margin-right: .2rem; }
</style>
</head>
<body>
<h1>fusionrec: live recommendations</h1>
<form id="form">
  <label>user <input id="user" name="user" placeholder="user id" required></label>
  <label>API key <input id="key" type="password" placeholder="(none if open)"></label>
  <button type="submit">show</button>
  <span id="status" class="muted"></span>
</form>
<h2>List <span id="meta" class="muted"></span></h2>
<table id="items">
  <thead><tr><th>#</th><th>item</th><th class="num">score</th><th>why it is here</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Fusion weights <span id="wmeta" class="muted"></span></h2>
<table id="weights">
  <thead><tr><th>segment</th><th>source</th><th>weight (mean over partitions)</th></tr></thead>
  <tbody></tbody>
</table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$("user").value = params.get("user") || localStorage.getItem("fusionrec-user") || "";
$("key").value = params.get("key") || localStorage.getItem("fusionrec-key") || "";

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function api(path) {
  const headers = $("key").value ? {"X-API-Key": $("key").value} : {};
  const response = await fetch(path, {headers});
  if (!response.ok) throw new Error(path + ": " + response.status + " " + (await response.text()));
  return response.json();
}

function ago(ms) {
  const s = ms / 1000;
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return s < 172800 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " days";
}

function reason(item, fallback) {
  const parts = Object.entries(item.contributions).filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1]);
  if (fallback) return "fallback: " + item.sources.join(", ") + " (no list for this user yet)";
  return parts.map(([source, v]) => source + " " + v.toFixed(2)).join(" + ") || "no source gave a share";
}

async function refresh() {
  const user = $("user").value.trim();
  if (!user) return;
  try {
    const rec = await api("/v1/users/" + encodeURIComponent(user) + "/recommendations");
    const body = $("items").querySelector("tbody");
    body.replaceChildren();
    rec.items.forEach((item, i) => {
      const tr = document.createElement("tr");
      tr.append(cell(String(i + 1)), cell(item.item_id), cell(item.score.toFixed(3), "num"),
                cell(reason(item, rec.fallback)));
      body.append(tr);
    });
    $("meta").textContent = rec.fallback
      ? "(global fallback: " + (rec.fallback_source || "nothing learned yet") + ")"
      : "(segment " + rec.segment + ", ranker " + rec.ranker + ", policy " + rec.policy.action +
        ", " + ago(rec.freshness_ms) + " behind the user's newest event)";
    const weights = await api("/v1/weights");
    const wbody = $("weights").querySelector("tbody");
    wbody.replaceChildren();
    for (const [segment, sources] of Object.entries(weights.mean)) {
      for (const [source, w] of Object.entries(sources).sort((a, b) => b[1] - a[1])) {
        const tr = document.createElement("tr");
        const td = cell("");
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = Math.round(w * 200) + "px";
        td.append(bar, document.createTextNode(w.toFixed(3)));
        tr.append(cell(segment), cell(source), td);
        wbody.append(tr);
      }
    }
    $("wmeta").textContent = "(" + Object.keys(weights.partitions).length + " partitions)";
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    $("status").className = "muted";
    document.body.dataset.loaded = "yes";
  } catch (err) {
    $("status").textContent = String(err.message || err);
    $("status").className = "error";
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("fusionrec-user", $("user").value.trim());
  localStorage.setItem("fusionrec-key", $("key").value);
  refresh();
});
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
