// Campaigns: sent, read, failed and read rate per target_id, and a chart over time.

import { api, field, fill, fmtTime, h, statusLine } from "../api.js";

const pct = (r) => `${(r * 100).toFixed(1)}%`;

export async function campaignsPage(root) {
  const listEl = h("div");
  const detailEl = h("div");
  const status = statusLine();
  let chart = null;

  async function load() {
    const { campaigns } = await api("GET", "/v1/campaigns", { auth: "app" });
    const refresh = h("button", { type: "button" }, "Refresh");
    refresh.addEventListener("click", () => load().catch((e) => status.error(e)));
    fill(listEl, h("section", { class: "card", "aria-labelledby": "c-h" },
      h("h2", { id: "c-h" }, "Campaigns and journeys"), refresh,
      campaigns.length ? h("table", { "data-testid": "campaigns" },
        h("caption", {}, "Most recent activity first"),
        h("thead", {}, h("tr", {}, ["target_id", "Sent", "Read", "Failed", "Read rate", "Last activity"]
          .map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, campaigns.map((c) => {
          const btn = h("button", { type: "button", class: "link mono", "aria-label": `Show campaign ${c.target_id}` }, String(c.target_id));
          btn.addEventListener("click", () => show(c.target_id).catch((e) => status.error(e)));
          return h("tr", {}, h("td", {}, btn), h("td", { class: "num" }, c.sent), h("td", { class: "num" }, c.read),
            h("td", { class: "num" }, c.failed), h("td", { class: "num" }, pct(c.read_rate)), h("td", {}, fmtTime(c.last_at)));
        }))) : h("p", {}, "No notifications delivered for this app yet."),
      status.el));
  }

  async function show(targetId) {
    const bucket = h("select", {}, ["minute", "hour", "day"].map((b) => h("option", { value: b }, b)));
    const chartEl = h("div", { class: "chart", role: "img", "aria-label": `Sent, read and failed per time bucket for ${targetId}` });
    const tableEl = h("div");
    const tiles = h("div", { class: "tiles" });
    const refresh = h("button", { type: "button" }, "Refresh");
    const draw = async () => {
      const [stats, series] = await Promise.all([
        api("GET", `/v1/campaigns/${targetId}/stats`, { auth: "app" }),
        api("GET", `/v1/campaigns/${targetId}/series?bucket=${bucket.value}`, { auth: "app" }),
      ]);
      fill(tiles, ...[["Sent", stats.sent], ["Read", stats.read], ["Failed", stats.failed],
        ["Read rate", pct(stats.read_rate)]].map(([k, v]) =>
        h("div", { class: "tile", "data-testid": `tile-${k.toLowerCase().replace(" ", "-")}` },
          h("span", { class: "tile-k" }, k), h("span", { class: "tile-v" }, String(v)))));
      const pts = series.points;
      const step = { minute: 60, hour: 3600, day: 86400 }[series.bucket];
      // One bucket alone would make the chart's time axis span years: frame it with empty
      // buckets on both sides.
      const framed = pts.length === 1
        ? [{ t: pts[0].t - step, sent: 0, read: 0, failed: 0 }, pts[0], { t: pts[0].t + step, sent: 0, read: 0, failed: 0 }]
        : pts;
      if (chart) { chart.destroy(); chart = null; }
      if (!pts.length) { fill(chartEl, h("p", {}, "Nothing to chart yet.")); }
      else {
        chartEl.replaceChildren();
        const data = ["t", "sent", "read", "failed"].map((k) => framed.map((p) => p[k]));
        chart = new window.uPlot({
          width: Math.max(320, Math.min(900, chartEl.clientWidth || 800)), height: 260,
          scales: { x: { time: true } },
          // Axis in UTC, like the table and the API's buckets.
          tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
          series: [{}, { label: "sent", stroke: "#2563eb", width: 2 },
            { label: "read", stroke: "#16a34a", width: 2 }, { label: "failed", stroke: "#dc2626", width: 2 }],
          axes: [{}, { label: `per ${bucket.value}` }],
        }, data, chartEl);
      }
      // The same figures as a table, for screen readers and for copying.
      fill(tableEl, h("details", {}, h("summary", {}, "Chart data as a table"),
        h("table", {}, h("thead", {}, h("tr", {}, ["Time (UTC)", "Sent", "Read", "Failed"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, pts.map((p) => h("tr", {}, h("td", {}, fmtTime(new Date(p.t * 1000).toISOString())),
            h("td", { class: "num" }, p.sent), h("td", { class: "num" }, p.read), h("td", { class: "num" }, p.failed)))))));
    };
    bucket.addEventListener("change", () => draw().catch((e) => status.error(e)));
    refresh.addEventListener("click", () => draw().catch((e) => status.error(e)));
    const heading = h("h2", { id: "cd-h", tabindex: "-1" }, `Campaign ${targetId}`);
    fill(detailEl, h("section", { class: "card", "aria-labelledby": "cd-h", "data-testid": "campaign-detail" },
      heading, tiles, h("div", { class: "inline" }, field("Bucket", bucket), refresh), chartEl, tableEl));
    await draw();
    heading.focus();
  }

  await load();
  root.append(listEl, detailEl);
}
