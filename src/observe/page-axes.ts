/**
 * The live chart's axes, as script text for the page (plain ES2017, no template literals) and kept
 * apart so that a unit test can run exactly what the browser runs.
 *
 * Rate axis: gridlines at whole multiples of a 1-2-5 step (1, 2, 5, 10, 20 … bytes/s, never below 1,
 * since bytes/s below one mean nothing), so an idle chart reads 0 1 2 3 4 B/s rather than rounding 0.25
 * steps into "0, 0, 1, 1, 1"; labels in one unit (B/s, kB/s, MB/s, GB/s) with the decimals the step
 * needs to tell them apart. Time axis: the chart's window ends at the latest snapshot; labels are the
 * wall-clock times of the whole multiples of `step` seconds inside it.
 */
export const CHART_AXES_JS = `
  function rateAxis(max, lines) {
    var raw = Math.max(max, lines) / lines;
    var p = Math.pow(10, Math.floor(Math.log10(raw) + 1e-9));
    var m = raw / p;
    var step = (m <= 1 + 1e-9 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
    var top = step * lines;
    var unit = top >= 1e9 ? 1e9 : top >= 1e6 ? 1e6 : top >= 1e3 ? 1e3 : 1;
    var name = unit === 1e9 ? 'GB/s' : unit === 1e6 ? 'MB/s' : unit === 1e3 ? 'kB/s' : 'B/s';
    var digits = step / unit >= 1 ? 0 : Math.ceil(-Math.log10(step / unit) - 1e-9);
    var labels = [];
    for (var g = 0; g <= lines; g++) labels.push((step * g / unit).toFixed(digits) + ' ' + name);
    return { top: top, labels: labels };
  }
  function clockLabel(sec) {
    var d = new Date(sec * 1000);
    function two(n) { return (n < 10 ? '0' : '') + n; }
    return two(d.getHours()) + ':' + two(d.getMinutes()) + ':' + two(d.getSeconds());
  }
  function timeAxis(end, span, step) {
    var ticks = [];
    for (var t = Math.ceil((end - span) / step) * step; t <= end; t += step) ticks.push({ t: t, label: clockLabel(t) });
    return ticks;
  }
`;
