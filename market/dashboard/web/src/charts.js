// Charts with uPlot (canvas, ~50 KB): a time series of counts and a bar chart by day.
import uPlot from "uplot";

const live = new Set();

function width(el) {
  return Math.max(260, Math.floor(el.clientWidth || el.parentElement?.clientWidth || 320));
}

function mount(el, opts, data) {
  const plot = new uPlot({ ...opts, width: width(el), height: 180 }, data, el);
  live.add({ el, plot });
  return plot;
}

/** Drop the charts of a view that was replaced. */
export function resetCharts() {
  for (const entry of live) entry.plot.destroy();
  live.clear();
}

let timer = 0;
window.addEventListener("resize", () => {
  clearTimeout(timer);
  timer = setTimeout(() => {
    for (const { el, plot } of live) plot.setSize({ width: width(el), height: 180 });
  }, 100);
});

/** Counts per bucket, oldest first: series = [{label, values, stroke}]. */
export function countsChart(el, start, bucketS, series) {
  const n = Math.max(0, ...series.map((s) => s.values.length));
  const xs = Array.from({ length: n }, (_, i) => start + i * bucketS);
  return mount(el, {
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{}, { size: 40 }],
    series: [{}, ...series.map((s) => ({
      label: s.label, stroke: s.stroke, width: 2, fill: `${s.stroke}22`, points: { show: false },
    }))],
  }, [xs, ...series.map((s) => s.values.map(Number))]);
}

/** Stacked-looking bars per day (MESH, as floats only for drawing; exact wei is in the table). */
export function dailyBars(el, days, series) {
  const xs = days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
  const bars = uPlot.paths.bars({ size: [0.6, 40], gap: 2 });
  return mount(el, {
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true, range: () => [xs[0] - 86400, xs[xs.length - 1] + 86400] },
              y: { range: (u, min, max) => [0, Math.max(1e-6, max)] } },
    axes: [{}, { size: 50 }],
    series: [{}, ...series.map((s) => ({
      label: s.label, stroke: s.stroke, fill: `${s.stroke}aa`, paths: bars, points: { show: false },
    }))],
  }, [xs, ...series.map((s) => s.values)]);
}
