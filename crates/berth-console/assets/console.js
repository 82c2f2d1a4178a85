// Berth console: reads certificate files into their text boxes, follows a service's logs
// (pause, search), refreshes its charts, and lists the nodes that join while the join page is
// open. Every page works without this script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const input of document.querySelectorAll("input.pem-file")) {
    input.addEventListener("change", async () => {
      const file = input.files && input.files[0];
      const target = document.getElementById(input.dataset.target);
      if (file && target) {
        target.value = await file.text();
      }
    });
  }
  const logs = document.getElementById("logs");
  if (logs) {
    followLogs(logs);
  }
  const charts = document.getElementById("charts");
  if (charts) {
    setInterval(() => refreshSection(charts, ".charts"), 15000);
  }
  const joined = document.getElementById("joined");
  if (joined) {
    setInterval(() => refreshSection(joined, ".joined-nodes"), 2000);
  }
});

const MAX_LINES = 5000;

function followLogs(section) {
  const pre = document.getElementById("log-lines");
  const follow = document.getElementById("logs-follow");
  const pause = document.getElementById("logs-pause");
  const search = document.getElementById("logs-search");
  const state = document.getElementById("logs-state");
  let lines = pre.textContent.split("\n").filter((line) => line.length > 0);
  let paused = false;
  let reader = null;

  const show = () => {
    const needle = search.value.trim().toLowerCase();
    const shown = needle ? lines.filter((line) => line.toLowerCase().includes(needle)) : lines;
    pre.textContent = shown.join("\n");
    if (!paused) {
      pre.scrollTop = pre.scrollHeight;
    }
  };
  const add = (text) => {
    for (const line of text.split("\n")) {
      if (line.length > 0) {
        lines.push(line);
      }
    }
    if (lines.length > MAX_LINES) {
      lines = lines.slice(lines.length - MAX_LINES);
    }
    if (!paused) {
      show();
    }
  };
  const stop = () => {
    if (reader) {
      reader.cancel();
      reader = null;
    }
    state.textContent = "";
  };
  const start = async () => {
    stop();
    const response = await fetch(section.dataset.source + "?follow=true&tail=0", {
      credentials: "same-origin",
    });
    if (!response.ok || !response.body) {
      state.textContent = response.status + " " + response.statusText;
      follow.checked = false;
      return;
    }
    state.textContent = "…";
    reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }));
      if (done) {
        break;
      }
      add(decoder.decode(value, { stream: true }));
    }
    state.textContent = "";
    follow.checked = false;
    reader = null;
  };
  follow.addEventListener("change", () => (follow.checked ? start() : stop()));
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? pause.dataset.paused : pause.dataset.running;
    if (!paused) {
      show();
    }
  });
  search.addEventListener("input", show);
}

// Replaces the part of `section` that `selector` finds with the same part of what its
// `data-source` answers now.
async function refreshSection(section, selector) {
  const response = await fetch(section.dataset.source, { credentials: "same-origin" });
  if (!response.ok) {
    return;
  }
  const html = await response.text();
  const holder = section.querySelector(selector);
  const parsed = new DOMParser().parseFromString(html, "text/html").querySelector(selector);
  if (holder && parsed) {
    holder.replaceWith(parsed);
  }
}

// The terminal page: term.js drawing what a shell in the replica writes, keys sent back over
// the console's WebSocket (binary frames both ways; the last text frame is the exit code).
document.addEventListener("DOMContentLoaded", () => {
  const host = document.getElementById("terminal");
  if (!host || typeof Terminal === "undefined") {
    return;
  }
  const state = document.getElementById("terminal-state");
  const term = new Terminal({ cols: 100, rows: 30, screenKeys: false, useStyle: false });
  term.open(host);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(scheme + "//" + location.host + host.dataset.exec);
  socket.binaryType = "arraybuffer";
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  socket.addEventListener("open", () => {
    state.textContent = "";
    term.focus();
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      const control = JSON.parse(event.data);
      if ("exit_code" in control) {
        state.textContent = host.dataset.ended.replace("{code}", String(control.exit_code));
      }
      return;
    }
    term.write(decoder.decode(new Uint8Array(event.data), { stream: true }));
  });
  socket.addEventListener("close", () => {
    if (state.textContent === "") {
      state.textContent = host.dataset.ended.replace("{code}", "?");
    }
  });
  term.on("data", (data) => {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(encoder.encode(data));
    }
  });
});
