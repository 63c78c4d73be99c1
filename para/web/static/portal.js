/* The portal's pages that draw: the cluster (refreshed from /api/cluster without reloading)
   and a node's timelines.  Every string from the cluster is shown with textContent, never
   parsed as HTML; Plotly gets labels escaped. */
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");
  var config = { displaylogo: false, responsive: true };

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function link(href, text) {
    var a = el("a", text);
    a.setAttribute("href", href);
    return a;
  }
  function bytes(v, rate) {
    if (v === null || v === undefined) { return "-"; }
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i += 1; }
    return v.toFixed(v >= 100 || i === 0 ? 0 : 1) + " " + u[i] + (rate ? "/s" : "");
  }
  function num(v, nd, suffix) {
    return v === null || v === undefined ? "-" : Number(v).toFixed(nd) + (suffix || "");
  }

  // -- the cluster --------------------------------------------------------------------------
  function cluster() {
    var root = document.getElementById("cluster");
    if (!root) { return; }
    var refresh = Math.max(1, Number(root.getAttribute("data-refresh")) || 5) * 1000;
    var metric = "cpu", busy = false, drawn = 0;
    var status = document.getElementById("cluster-status");
    var tabs = document.querySelectorAll("#metric-tabs button");
    tabs.forEach(function (b) {
      b.addEventListener("click", function () {
        metric = b.getAttribute("data-metric");
        tabs.forEach(function (x) { x.className = x === b ? "on" : ""; });
        poll();
      });
    });
    function draw(d) {
      var started = performance.now();
      var h = d.heatmap, pct = h.unit === "%";
      var trace = {
        type: "heatmap", z: h.z, x: h.x, y: h.hosts.map(esc), colorscale: "YlOrRd",
        zmin: pct ? 0 : undefined, zmax: pct ? 100 : undefined, hoverongaps: false,
        colorbar: { title: { text: h.unit } },
        hovertemplate: "%{y}<br>%{x} s: %{z}<extra></extra>"
      };
      var layout = {
        title: { text: esc(h.title) + " by node, last " + Math.round(-h.x[0] || 0) + " s (" + h.bucket_s + " s a column)" },
        margin: { l: 110, r: 20, t: 40, b: 40 }, xaxis: { title: { text: "seconds before now" } },
        yaxis: { automargin: true, autorange: "reversed", type: "category" }
      };
      var plot = document.getElementById("heatmap");
      Plotly.react(plot, [trace], layout, config);
      if (!plot.getAttribute("data-click")) {
        plot.setAttribute("data-click", "1");
        plot.on("plotly_click", function (ev) {
          var p = ev.points && ev.points[0];
          if (p) { window.location.href = "/nodes/" + encodeURIComponent(h.hosts[p.pointNumber[0]]); }
        });
      }
      var tb = document.querySelector("#live-jobs tbody");
      tb.textContent = "";
      d.jobs.forEach(function (j) {
        var tr = el("tr");
        tr.setAttribute("data-job", j.job);
        var td = el("td"); td.appendChild(link("/jobs/" + encodeURIComponent(j.job), j.job)); tr.appendChild(td);
        tr.appendChild(el("td", j.user || "-"));
        tr.appendChild(el("td", j.name || j.app || "-"));
        tr.appendChild(el("td", (j.hosts || []).length, "num"));
        tr.appendChild(el("td", num(j.cpu_cores, 2), "num"));
        tr.appendChild(el("td", bytes(j.rss_bytes), "num"));
        tr.appendChild(el("td", bytes(j.io_bps, true), "num"));
        tr.appendChild(el("td", num(j.gpu_util_pct, 0, " %"), "num"));
        tb.appendChild(tr);
      });
      document.getElementById("jobs-count").textContent = String(d.jobs.length);
      var ta = document.querySelector("#live-alerts tbody");
      ta.textContent = "";
      d.alerts.forEach(function (a) {
        var tr = el("tr");
        var sev = el("td"); sev.appendChild(el("span", a.severity, "tag sev-" + a.severity)); tr.appendChild(sev);
        tr.appendChild(el("td", a.rule, "mono"));
        var where = el("td");
        if (a.host) { where.appendChild(link("/nodes/" + encodeURIComponent(a.host), a.host)); }
        if (a.job) { where.appendChild(document.createTextNode(" ")); where.appendChild(link("/jobs/" + encodeURIComponent(a.job), "job " + a.job)); }
        tr.appendChild(where);
        tr.appendChild(el("td", a.summary));
        ta.appendChild(tr);
      });
      document.getElementById("alerts-count").textContent = String(d.alerts.length);
      drawn += 1;
      root.setAttribute("data-draw-ms", String(Math.round(performance.now() - started)));
      root.setAttribute("data-updates", String(drawn));
      root.setAttribute("data-t", String(d.t));
      var silent = d.shards.filter(function (s) { return !s.ok; });
      status.textContent = d.nodes + " nodes" + (d.stale ? " (" + d.stale + " silent)" : "") +
        (d.shards.length ? ", " + d.shards.length + " shards" : "") +
        ", updated " + new Date(d.t * 1000).toISOString().slice(11, 19) + " UTC" +
        (silent.length ? "; " + silent.length + " of " + d.shards.length + " shards not answering: " +
          silent.map(function (s) { return s.shard + " (" + (s.error || "no answer") + ")"; }).join("; ") : "");
    }
    function poll() {
      if (busy) { return; }
      busy = true;
      fetch("/api/cluster?metric=" + encodeURIComponent(metric), { credentials: "same-origin" })
        .then(function (r) {
          return r.json().then(function (d) { if (!r.ok) { throw new Error(d.error || r.statusText); } return d; });
        })
        .then(draw)
        .catch(function (e) { status.textContent = "cannot refresh: " + e.message; })
        .then(function () { busy = false; });
    }
    poll();
    setInterval(poll, refresh);
  }

  // -- a node ------------------------------------------------------------------------------
  function node() {
    var holder = document.getElementById("node-data");
    if (!holder) { return; }
    var data = JSON.parse(holder.textContent), tl = data.timelines;
    function times(b) { return b.map(function (s) { return new Date(s * 1000); }); }
    function lines(key, series, ytitle, scale) {
      var d = tl[key], plot = document.getElementById("tl-" + key);
      if (!d || !plot) { return; }
      var x = times(d.b);
      var traces = series.map(function (s) {
        return { type: "scatter", mode: "lines", name: s[1], x: x,
                 y: d[s[0]].map(function (v) { return v === null ? null : v / (scale || 1); }) };
      });
      Plotly.newPlot(plot, traces, {
        margin: { l: 60, r: 10, t: 10, b: 40 }, yaxis: { title: { text: ytitle }, rangemode: "tozero" },
        legend: { orientation: "h" }
      }, config);
    }
    lines("cpu", [["busy_pct", "busy %"], ["iowait_pct", "iowait %"]], "% of the CPUs");
    lines("mem", [["used_pct", "used %"]], "% of memory");
    lines("io", [["read_bps", "read"], ["write_bps", "written"]], "MiB/s", 1048576);
    lines("net", [["rx_bps", "received"], ["tx_bps", "sent"]], "MiB/s", 1048576);
    lines("gpu", [["util_pct", "busy %"], ["mem_pct", "memory %"]], "%");
  }

  if (page === "cluster") { cluster(); }
  if (page === "node") { node(); }
})();
