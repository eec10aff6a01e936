// The dashboard: reads /admin/stream (server-sent events, with the admin key in the
// Authorization header, so fetch and not EventSource) and draws what each tick says.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
const ms = (v) => (v == null ? "–" : v === Infinity || v > 1e6 ? ">10 s" : v < 1 ? v.toFixed(2) : v.toFixed(1));
const series = []; // deliveries/s, publishes/s per tick
let previous = null;
let key = sessionStorage.getItem("herald-admin-key") || new URLSearchParams(location.hash.slice(1)).get("key") || "";

function status(text, cls) {
  $("status").textContent = text;
  $("status").className = cls || "";
}

function rates(now, before) {
  const out = new Map();
  if (!before) return out;
  const dt = (now.at_ms - before.at_ms) / 1000;
  if (dt <= 0) return out;
  const old = new Map(before.processes.map((p) => [p.process, p]));
  for (const p of now.processes) {
    const o = old.get(p.process);
    if (!o) continue;
    out.set(p.process, {
      publish: Math.max(0, p.publishes - o.publishes) / dt,
      deliver: Math.max(0, p.deliveries - o.deliveries) / dt,
    });
  }
  return out;
}

function channelRates(now, before) {
  const out = new Map();
  if (!before) return out;
  const dt = (now.at_ms - before.at_ms) / 1000;
  const seqs = new Map();
  for (const p of before.processes) for (const [c, , seq] of p.top) seqs.set(c, Math.max(seqs.get(c) || 0, seq));
  for (const p of now.processes) {
    for (const [c, , seq] of p.top) {
      if (seqs.has(c) && dt > 0) out.set(c, Math.max(out.get(c) || 0, (seq - seqs.get(c)) / dt));
    }
  }
  return out;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c && typeof c === "object") {
      td.textContent = c.text;
      td.className = c.cls || "";
    } else {
      td.textContent = c;
    }
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map(row));
}

function draw() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...series.map((p) => p.deliver));
  const step = w / Math.max(1, 119);
  for (const [field, color] of [["deliver", "#4fb3ff"], ["publish", "#7bd88f"]]) {
    ctx.beginPath();
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    series.forEach((p, i) => {
      const x = i * step, y = h - 4 - (p[field] / max) * (h - 18);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  ctx.fillStyle = "#8a9aab";
  ctx.font = "12px system-ui";
  ctx.fillText(`deliveries/s (blue) and publishes/s (green), last 2 min — peak ${fmt(max)}/s`, 8, 14);
}

function show(snap) {
  const r = rates(snap, previous);
  const cr = channelRates(snap, previous);
  const procs = snap.processes;
  const sum = (f) => procs.reduce((a, p) => a + f(p), 0);
  let pub = 0, del = 0;
  for (const v of r.values()) { pub += v.publish; del += v.deliver; }
  $("f-connections").textContent = fmt(sum((p) => p.connections));
  $("f-channels").textContent = fmt(sum((p) => p.channels));
  $("f-publish").textContent = previous ? fmt(pub) : "–";
  $("f-deliver").textContent = previous ? fmt(del) : "–";
  $("f-slow").textContent = fmt(sum((p) => p.slow_consumer_disconnects));
  $("f-resets").textContent = fmt(sum((p) => p.resets));
  fill("members", procs.map((p) => {
    const pr = r.get(p.process) || {};
    return [p.process, p.role, fmt(p.connections), fmt(p.channels), fmt(pr.publish), fmt(pr.deliver),
      { text: fmt(p.slow_consumer_disconnects), cls: p.slow_consumer_disconnects ? "warn" : "" },
      { text: fmt(p.stalled_disconnects), cls: p.stalled_disconnects ? "warn" : "" },
      fmt(p.ephemeral_dropped), fmt(p.resets)];
  }));
  const hop = (p, name) => (p.hops[name] ? `${ms(p.hops[name][0])} / ${ms(p.hops[name][1])}` : "–");
  fill("hops", procs.filter((p) => Object.keys(p.hops).length).map((p) => [p.process,
    hop(p, "publish_to_commit"), hop(p, "commit_to_fabric"), hop(p, "fabric_to_node"), hop(p, "node_to_socket")]));
  const top = new Map();
  for (const p of procs) for (const [c, n] of p.top) top.set(c, (top.get(c) || 0) + n);
  fill("top", [...top.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10)
    .map(([c, n]) => [c, fmt(n), cr.has(c) ? cr.get(c).toFixed(1) : "–"]));
  if (previous) {
    series.push({ publish: pub, deliver: del });
    if (series.length > 120) series.shift();
    draw();
  }
  previous = snap;
}

async function follow() {
  for (let attempt = 0; ; attempt++) {
    try {
      const resp = await fetch("/admin/stream", { headers: key ? { Authorization: `Bearer ${key}` } : {} });
      if (resp.status === 401 || resp.status === 403) {
        const body = await resp.json().catch(() => ({}));
        status((body.error && body.error.message) || `refused (${resp.status})`, "down");
        $("login").hidden = false;
        $("board").hidden = true;
        return;
      }
      if (!resp.ok) throw new Error(`status ${resp.status}`);
      $("login").hidden = true;
      $("board").hidden = false;
      status("live", "live");
      attempt = 0;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) show(JSON.parse(data));
        }
      }
      status("reconnecting", "down");
    } catch (e) {
      status(`reconnecting (${e.message})`, "down");
    }
    // Jittered backoff, never a tight loop.
    const delay = Math.min(30000, 500 * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random() / 2);
    await new Promise((r) => setTimeout(r, delay));
  }
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem("herald-admin-key", key);
  follow();
});

$("trace-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("trace-id").value.trim();
  const q = id ? `trace_id=${encodeURIComponent(id)}`
    : `channel=${encodeURIComponent($("trace-channel").value.trim())}&seq=${encodeURIComponent($("trace-seq").value.trim())}`;
  const out = $("trace-out");
  out.textContent = "asking the cluster…";
  const resp = await fetch(`/v1/trace?${q}`, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    out.textContent = (body.error && `${body.error.code}: ${body.error.message}`) || `status ${resp.status}`;
    return;
  }
  const first = body.hops.length ? body.hops[0].at_us : 0;
  let prev = first;
  const lines = [`trace ${body.trace_id} — ${body.channel}${body.seq ? " seq " + body.seq : ""}, ${body.processes.length} processes`];
  for (const h of body.hops) {
    const extra = Object.entries(h.counts || {}).map(([k, v]) => `${k}=${v}`).concat(h.note ? [h.note] : []).join(" ");
    lines.push(`${((h.at_us - first) / 1000).toFixed(3).padStart(10)} ms ${("+" + ((h.at_us - prev) / 1000).toFixed(3)).padStart(10)}  ${(h.process + " (" + h.role + ")").padEnd(26)} ${h.step} ${extra}`);
    prev = h.at_us;
  }
  out.textContent = lines.join("\n");
});

if (location.hash.includes("key=")) {
  sessionStorage.setItem("herald-admin-key", key);
  location.hash = "";
}
follow();
