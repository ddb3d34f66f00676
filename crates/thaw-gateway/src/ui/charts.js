// Charts of a function's last hour (GET {F}/stats: 60 minutes, oldest
// first), drawn as SVG element by element. Figures and labels are text
// in HTML around the drawing, so they never stretch with it.

import { h, svg } from './dom.js';

const WIDTH = 240;
const HEIGHT = 60;

function minuteLabel(m) {
  const d = new Date(m.start_ms);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}

function frame(title, summary, drawing, max) {
  return h('figure', { class: 'chart' },
    h('figcaption', {},
      h('span', { class: 'chart-title' }, title),
      h('strong', {}, summary)),
    drawing,
    h('div', { class: 'chart-scale' }, h('span', {}, '60 min ago'), h('span', {}, `max ${max}`), h('span', {}, 'now')));
}

function canvas(label) {
  return svg('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-label': label,
  }, svg('line', { x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5, class: 'axis' }));
}

// One bar a minute; a minute whose `value(m)` is null or 0 has none.
function bars(minutes, value, max, describe, cls) {
  const step = WIDTH / minutes.length;
  const out = canvas(cls);
  minutes.forEach((m, i) => {
    const v = value(m);
    if (!v || !(max > 0)) return;
    const height = Math.max((v / max) * (HEIGHT - 2), 1);
    out.append(svg('rect', {
      x: (i * step + 0.5).toFixed(2),
      y: (HEIGHT - height).toFixed(2),
      width: Math.max(step - 1, 1).toFixed(2),
      height: height.toFixed(2),
      class: cls,
    }, svg('title', {}, `${minuteLabel(m)}  ${describe(m)}`)));
  });
  return out;
}

// Lines through the minutes that have a value, one per series.
function lines(minutes, series, max) {
  const step = WIDTH / minutes.length;
  const out = canvas('latency');
  for (const { value, cls, name } of series) {
    let d = '';
    let drawing = false;
    minutes.forEach((m, i) => {
      const v = value(m);
      if (v === null || v === undefined) {
        drawing = false;
        return;
      }
      const x = (i * step + step / 2).toFixed(2);
      const y = (HEIGHT - 1 - (max > 0 ? (v / max) * (HEIGHT - 4) : 0)).toFixed(2);
      d += `${drawing ? 'L' : 'M'}${x} ${y} `;
      drawing = true;
      out.append(svg('circle', { cx: x, cy: y, r: 1.6, class: cls },
        svg('title', {}, `${minuteLabel(m)}  ${name} ${v.toFixed(2)} ms`)));
    });
    if (d) out.append(svg('path', { d, class: `${cls} line` }));
  }
  return out;
}

function percent(part, whole) {
  return whole > 0 ? (100 * part) / whole : 0;
}

function ms(v) {
  if (v === null || v === undefined) return '—';
  return v < 10 ? `${v.toFixed(2)} ms` : `${v.toFixed(0)} ms`;
}

// The four charts of one function: calls a minute, error rate, p50 and
// p99 latency, share of cold starts.
export function hourCharts(stats) {
  const minutes = stats.minutes;
  const calls = minutes.reduce((n, m) => n + m.calls, 0);
  const errors = minutes.reduce((n, m) => n + m.errors, 0);
  const cold = minutes.reduce((n, m) => n + m.cold, 0);
  const busiest = Math.max(0, ...minutes.map((m) => m.calls));
  const slowest = Math.max(0, ...minutes.map((m) => m.p99_ms ?? 0));
  const last = [...minutes].reverse().find((m) => m.calls > 0);
  return h('div', { class: 'charts' },
    frame('Calls / minute', `${calls} in the hour`,
      bars(minutes, (m) => m.calls, busiest, (m) => `${m.calls} calls`, 'calls'), busiest),
    frame('Error rate', calls ? `${percent(errors, calls).toFixed(1)} %` : '—',
      bars(minutes, (m) => (m.calls ? percent(m.errors, m.calls) : null), 100,
        (m) => `${m.errors} of ${m.calls} failed`, 'errors'), '100 %'),
    frame('Latency p50 / p99', last ? `${ms(last.p50_ms)} / ${ms(last.p99_ms)}` : '—',
      lines(minutes, [
        { value: (m) => m.p99_ms, cls: 'p99', name: 'p99' },
        { value: (m) => m.p50_ms, cls: 'p50', name: 'p50' },
      ], slowest), ms(slowest)),
    frame('Cold starts', calls ? `${percent(cold, calls).toFixed(1)} % of calls` : '—',
      bars(minutes, (m) => (m.calls ? percent(m.cold, m.calls) : null), 100,
        (m) => `${m.cold} of ${m.calls} cold`, 'cold'), '100 %'));
}

// A bar split in two by an alias's weights: `percent` to the second part.
export function weightBar(percent) {
  const split = (WIDTH * percent) / 100;
  return svg('svg', { viewBox: `0 0 ${WIDTH} 8`, preserveAspectRatio: 'none', class: 'weights', role: 'img',
    'aria-label': `${100 - percent} % / ${percent} %` },
  svg('rect', { x: 0, y: 0, width: (WIDTH - split).toFixed(2), height: 8, class: 'first' }),
  svg('rect', { x: (WIDTH - split).toFixed(2), y: 0, width: split.toFixed(2), height: 8, class: 'second' }));
}

// How much of a budget is used: a bar with its figures beside it.
export function meter(used, limit, unit) {
  const share = limit > 0 ? Math.min(used / limit, 1) : 0;
  return h('span', { class: 'meter' },
    svg('svg', { viewBox: '0 0 100 8', preserveAspectRatio: 'none', role: 'img',
      'aria-label': `${used} of ${limit} ${unit}` },
    svg('rect', { x: 0, y: 0, width: 100, height: 8, class: 'track' }),
    svg('rect', { x: 0, y: 0, width: (100 * share).toFixed(2), height: 8, class: share > 0.9 ? 'fill high' : 'fill' })),
    h('span', {}, `${used} / ${limit}${unit ? ` ${unit}` : ''}`));
}
