// Live progress: polls /api/progress and shows where the run is. Served from this origin (the CSP allows no
// inline script); it writes text only (textContent), never markup.
(function () {
  "use strict";
  const box = document.getElementById("live");
  if (!box) return;

  function describe(p) {
    if (!p.run) return "no run yet";
    const parts = ["run " + p.run, "current policy " + p.current_policy];
    if (p.state) parts.push("daemon " + p.state);
    const it = p.iteration;
    if (it) {
      const done = it.stages.filter((s) => s.done).map((s) => s.stage + " " + s.wall_s + " s");
      let line = "iteration " + it.index + " (" + it.status + ")";
      if (it.running) line += ": running " + it.running + " since " + new Date(it.since).toLocaleTimeString();
      parts.push(line);
      if (done.length) parts.push("done: " + done.join(", "));
    }
    parts.push(p.lease ? "held by " + p.lease.holder : "idle");
    return parts.join(" · ");
  }

  async function poll() {
    try {
      const response = await fetch(box.dataset.source, { headers: { Accept: "application/json" } });
      box.textContent = response.ok ? describe(await response.json()) : "progress unavailable (" + response.status + ")";
      box.dataset.updated = String(Date.now());
    } catch (err) {
      box.textContent = "progress unavailable (the dashboard is not answering)";
    }
  }

  poll();
  setInterval(poll, 3000);
})();
