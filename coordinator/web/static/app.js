// Switchyard dashboard: renders the read API's overview, live from the
// server-sent events of /v1/events. Read-only; no third-party code; charts
// are drawn as SVG by hand.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  // A page load stamp: a test can tell live updates from a reload.
  window.switchyardPage = { loadedAt: Date.now(), events: 0 };

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids.flat(Infinity)) {
      if (k === undefined || k === null) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  const num = (v) => Number(v || 0);
  const enumName = (v, prefix) => String(v || "").replace(prefix, "").toLowerCase().replace(/_/g, "-") || "unknown";
  const phaseName = (p) => enumName(p, "ROLLOUT_PHASE_");
  // clock prints a time as the CLI and the audit log do: in UTC, marked so,
  // whatever the browser's zone, so a line here and the same line from
  // switchyard rollout history read the same.
  const clock = (d) => isNaN(d) ? "-" : d.toISOString().slice(11, 19) + " UTC";
  const time = (ts) => ts ? clock(new Date(ts)) : "-";
  const pct = (x) => (100 * num(x)).toFixed(2) + "%";
  const ms = (s) => (1000 * num(s)).toFixed(0) + " ms";
  // duration renders protojson's "3600s" as "1h0m0s".
  const duration = (d) => {
    let sec = Math.round(parseFloat(d || "0"));
    const h = Math.floor(sec / 3600), m = Math.floor(sec % 3600 / 60);
    sec %= 60;
    return (h ? h + "h" : "") + (h || m ? m + "m" : "") + sec + "s";
  };
  const weights = (w) => Object.keys(w || {}).sort().map((k) => k + "=" + w[k]).join(" ") || "-";
  function table(head, rows, rowAttrs) {
    return el("table", {},
      el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((r, i) => el("tr", rowAttrs ? rowAttrs(i) : {}, r.map((c) => el("td", {}, c))))));
  }

  // ---- charts ----
  const colours = { from: "#2f6fdf", to: "#1a9c55" };
  const dashes = { p50: "", p90: "5 3", p99: "1 3" };

  // chart draws lines (each {name, colour, dash, points: [[t, y]]}) on
  // shared axes; fmt labels the y axis.
  function chart(title, lines, fmt, attrs) {
    const W = 600, H = 180, L = 56, R = 8, T = 10, B = 22;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const add = (tag, a, text) => {
      const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
      for (const [k, v] of Object.entries(a)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      svg.append(n);
      return n;
    };
    const all = lines.flatMap((l) => l.points);
    let total = 0;
    if (all.length > 0) {
      const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
      const top = Math.max(...all.map((p) => p[1]));
      const ymax = top || 1;
      if (top === 0) add("text", { x: W / 2 - 50, y: T + 14 }, "all values are 0");
      const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : (t - t0) / (t1 - t0) * (W - L - R));
      const y = (v) => H - B - v / ymax * (H - T - B);
      for (const f of [0, 0.5, 1]) {
        add("line", { x1: L, x2: W - R, y1: y(f * ymax), y2: y(f * ymax), stroke: "#eee" });
        add("text", { x: 2, y: y(f * ymax) + 3 }, fmt(f * ymax));
      }
      add("text", { x: L, y: H - 6 }, clock(new Date(t0)));
      add("text", { x: W - R - 80, y: H - 6 }, clock(new Date(t1)));
      for (const l of lines) {
        if (l.points.length === 0) continue;
        total += l.points.length;
        const d = l.points.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1)).join(" ");
        add("path", { d, fill: "none", stroke: l.colour, "stroke-width": 1.6, "stroke-dasharray": l.dash || "",
          "data-line": l.name });
        if (l.points.length === 1) add("circle", { cx: x(l.points[0][0]), cy: y(l.points[0][1]), r: 2, fill: l.colour });
      }
    } else {
      add("text", { x: W / 2 - 60, y: H / 2 }, "no telemetry yet");
    }
    const legend = el("div", { class: "legend" }, lines.map((l) =>
      el("span", {}, el("span", { class: "swatch " + (l.role || "") }), l.name)));
    return el("div", Object.assign({ class: "chart", "data-points": total }, attrs || {}), el("h3", {}, title), svg, legend);
  }

  function seriesCharts(series) {
    if (!series) return el("p", { class: "muted" }, "no telemetry yet");
    const backends = series.backends || [];
    const pts = (b, f) => (b.points || []).filter((p) => num(p.requests) > 0).map((p) => [Date.parse(p.at), f(p)]);
    const errLines = backends.map((b) => ({ name: `${b.backend} (${b.role}) errors`, role: b.role, colour: colours[b.role], points: pts(b, (p) => num(p.errorRate)) }));
    const latLines = backends.flatMap((b) => ["p50", "p90", "p99"].map((q) => ({
      name: `${b.backend} ${q}`, role: b.role, colour: colours[b.role], dash: dashes[q], points: pts(b, (p) => num(p[q + "Seconds"])) })));
    return el("div", { class: "charts" },
      chart("Error rate per backend", errLines, (v) => (100 * v).toFixed(1) + "%", { "data-chart": "errors" }),
      chart("Latency quantiles per backend", latLines, (v) => (1000 * v).toFixed(0) + " ms", { "data-chart": "latency" }),
      el("p", { class: "muted" }, `one point per ${num(series.stepSeconds) || 1} s`));
  }

  // ---- panels ----
  function evidenceBlock(ev) {
    if (!ev) return null;
    const kids = [el("strong", {}, "Rollback evidence: "), ev.summary || ev.guardrail || ""];
    const s = ev.sequential;
    if (s) {
      kids.push(el("dl", { class: "kv" },
        el("dt", {}, "test"), el("dd", {}, s.test || "-"),
        el("dt", {}, "statistic"), el("dd", {}, `${num(s.statistic).toFixed(2)} reached the threshold ${num(s.threshold).toFixed(2)}`),
        el("dt", {}, "guarantee"), el("dd", {}, `a release no worse than the old backend is rolled back with probability at most ${num(s.falseAlarm)} over ${duration(s.horizon)} of canary`),
        el("dt", {}, "new backend"), el("dd", {}, `${num(s.candidateEvents)} of ${num(s.candidateRequests)}`),
        el("dt", {}, "old backend"), el("dd", {}, `${num(s.baselineEvents)} of ${num(s.baselineRequests)}`),
        el("dt", {}, "p-value"), el("dd", {}, num(s.pValue).toPrecision(2))));
      if ((s.nodes || []).length) {
        kids.push(table(["node", "contribution", "new", "old"], s.nodes.map((n) => [n.node, num(n.contribution).toFixed(2),
          `${num(n.candidateEvents)}/${num(n.candidateRequests)}`, `${num(n.baselineEvents)}/${num(n.baselineRequests)}`])));
      }
    }
    if ((ev.windows || []).length) kids.push(windowsTable(ev.windows));
    return el("div", { class: "evidence", "data-evidence": "rollback" }, kids);
  }

  function windowsTable(wins) {
    return table(["window", "verdict", "new req", "new err", "new latency", "old req", "old err", "old latency", "why"],
      wins.map((w) => [time(w.start), w.verdict || "-", num(w.candidate && w.candidate.requests), pct(w.candidate && w.candidate.errorRate),
        ms(w.candidate && w.candidate.latencySeconds), num(w.baseline && w.baseline.requests), pct(w.baseline && w.baseline.errorRate),
        ms(w.baseline && w.baseline.latencySeconds), w.reason || ""]));
  }

  function renderRollouts(ov) {
    const views = (ov.rollouts && ov.rollouts.rollouts) || [];
    const series = {};
    for (const s of ov.series || []) series[s.rollout] = s;
    if (views.length === 0) return [el("p", { class: "muted" }, "no rollouts")];
    const older = num(ov.olderRollouts);
    const note = older ? [el("p", { class: "muted", "data-field": "older-rollouts" },
      `${older} older finished rollout${older === 1 ? "" : "s"} not shown: switchyard rollout list shows every one`)] : [];
    return note.concat(views.map((v) => {
      const r = v.rollout || {}, sp = r.spec || {};
      const phase = phaseName(r.phase);
      const live = num(v.live);
      return el("div", { class: "rollout", "data-rollout": r.id, "data-phase": phase },
        el("h3", {}, r.id, " ", el("span", { class: "phase", "data-phase": phase }, phase + (r.paused && phase === "progressing" ? " (paused)" : ""))),
        el("dl", { class: "kv" },
          el("dt", {}, "service"), el("dd", {}, `${sp.service} (${sp.from} → ${sp.to})`),
          el("dt", {}, "position"), el("dd", { "data-field": "position" }, v.position || "-"),
          v.waiting ? [el("dt", {}, "waiting for"), el("dd", {}, v.waiting)] : null,
          r.reason ? [el("dt", {}, "reason"), el("dd", {}, r.reason)] : null,
          el("dt", {}, "generation"), el("dd", {}, num(r.generation)),
          el("dt", {}, "converged"), el("dd", { "data-field": "converged" }, `${num(v.converged)}/${live} live nodes`),
          (v.held || []).length ? [el("dt", {}, "held"), el("dd", { class: "bad", "data-field": "held" },
            `${v.held.join(", ")}: kept on ${sp.from} by a failed pre-traffic hook`)] : null,
          v.analysis ? [el("dt", {}, "judge"), el("dd", { "data-field": "analysis" }, v.analysis)] : null),
        seriesCharts(series[r.id]),
        evidenceBlock(r.evidence),
        (v.windows || []).length ? [el("h3", {}, "Latest analysis windows"), windowsTable(v.windows)] : null,
        el("h3", {}, "History"),
        el("ol", { class: "history", "data-field": "history" }, (r.history || []).map((h) =>
          el("li", {}, `${time(h.at)} #${num(h.index)} ${phaseName(h.phase)} ${h.message || ""}${h.operator ? " (" + h.operator + ")" : ""}`))));
    }));
  }

  function renderFleet(ov) {
    const svcs = (ov.fleet && ov.fleet.services) || [];
    if (svcs.length === 0) return [el("p", { class: "muted" }, "no nodes")];
    return svcs.map((s) => el("div", { "data-service": s.service },
      el("h3", {}, `${s.service}`),
      el("p", {}, `desired generation ${num(s.epoch)}/${num(s.generation)}` + (s.rollout ? `, rollout ${s.rollout}` : "") +
        `; ${num(s.converged)}/${num(s.live)} live nodes converged`,
        (s.staleNodes || []).length ? el("span", { class: "bad", "data-field": "stale-nodes" }, `; stale: ${s.staleNodes.join(", ")}` +
          (num(s.omittedStaleNodes) > 0 ? ` and ${num(s.omittedStaleNodes)} more` : "")) : null,
        (s.heldNodes || []).length ? el("span", { class: "bad" }, `; held by a failed pre-traffic hook: ${s.heldNodes.join(", ")}`) : null),
      (s.waves || []).map((w) => [
        el("h3", { class: "muted" }, w.index === -1 || w.wave === "-" ? "no wave" : `wave ${num(w.index) + 1}: ${w.wave}`),
        (w.nodes || []).length === 0 ? el("p", { class: "muted" }, "no nodes") :
          table(["node", "applied (epoch/gen)", "weights", "observed", "driver", "seen", "message"],
            w.nodes.map((n) => [n.node, `${num(n.appliedEpoch)}/${num(n.appliedGeneration)}`, weights(n.weights),
              Object.keys(n.observedWeights || {}).length ? weights(n.observedWeights) + (n.observedMatches ? "" : " (differs)") : "-",
              enumName(n.driver, "DRIVER_HEALTH_"), `${num(n.secondsSinceSeen).toFixed(0)} s ago${n.stopped ? " (stopped)" : n.stale ? " (stale)" : ""}`,
              [n.diverged ? "DIVERGED " : "", n.documentExpired ? "EXPIRED " : "", n.drift ? "drift: " + n.drift + " " : "", n.message || ""].join("")]),
            (i) => (w.nodes[i].stale ? { class: "stale-node", "data-node": w.nodes[i].node } : { "data-node": w.nodes[i].node })),
        num(w.omittedNodes) > 0 ? el("p", { class: "muted", "data-field": "omitted-nodes" },
          `and ${num(w.omittedNodes)} more nodes of this wave, not listed here (the nodes that need a look are listed first); ` +
          `switchyard fleet status ${s.service} lists every one`) : null])));
  }

  function renderDrills(ov) {
    const ks = ov.killSwitch || {};
    const live = num(ks.liveDrills);
    $("killswitch").replaceChildren(el("p", { "data-field": "killswitch" },
      live === 0 ? "Kill switch: nothing to stop (no scheduled or running drill)." :
        `Kill switch: ${live} live drill(s)` + ((ks.running || []).length ? ` (running: ${ks.running.join(", ")})` : "") +
        "; `switchyard chaos stop-all` ends them all."));
    const drills = (ov.drills && ov.drills.drills) || [];
    if (drills.length === 0) return [el("p", { class: "muted" }, "no drills")];
    const older = num(ov.olderDrills);
    const note = older ? [el("p", { class: "muted", "data-field": "older-drills" },
      `${older} older ended drill${older === 1 ? "" : "s"} not shown: switchyard chaos status shows every one`)] : [];
    return note.concat([table(["drill", "service", "phase", "targets", "active", "ends", "report"], drills.map((v) => {
      const d = v.drill || {};
      const rep = d.report ? `${d.report.verdict || ""}: ${d.report.summary || ""}` : (d.abortReason || "");
      return [d.id, (d.spec || {}).service, enumName(d.phase, "DRILL_PHASE_"), (d.targets || []).join(", ") || "-",
        (v.active || []).join(", ") || "-", time(d.endAt), rep];
    }))]);
  }

  function render(ov) {
    window.switchyardPage.events++;
    window.switchyardPage.last = ov;
    const conn = $("conn");
    conn.dataset.state = ov.stale ? "stale" : "live";
    conn.textContent = ov.stale ? "stale" : "live";
    $("source").textContent = `answered by ${ov.answeredBy || "?"}, leader ${ov.leader || "unknown"}`;
    $("updated").textContent = "updated " + time(ov.at);
    const banner = $("stale");
    banner.hidden = !ov.stale;
    const elsewhere = ov.leader && ov.leader !== ov.answeredBy ? ". Open the leader's dashboard for current data." : ".";
    banner.textContent = ov.stale ? "This coordinator could not confirm that its view is current: " + (ov.staleReason || "") + elsewhere : "";
    $("rollouts").replaceChildren(...renderRollouts(ov));
    $("fleet").replaceChildren(...renderFleet(ov));
    $("drills").replaceChildren(...renderDrills(ov));
  }

  function connect() {
    const es = new EventSource("/v1/events");
    es.addEventListener("overview", (e) => {
      try { render(JSON.parse(e.data)); } catch (err) {
        window.switchyardPage.error = String(err);
        console.error("switchyard: bad event", err);
      }
    });
    es.onerror = () => {
      const conn = $("conn");
      conn.dataset.state = "down";
      conn.textContent = "disconnected, retrying…";
    };
  }
  connect();
})();
