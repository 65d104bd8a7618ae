/* Darkboard: pure helpers for the charts (colours of the lines of one chart, values on a log axis).
 * Loaded before app.js; also loadable by node (module.exports) for the tests. */
(function (root) {
  "use strict";

  function hexToHsl(hex) {
    const r = parseInt(hex.slice(1, 3), 16) / 255, g = parseInt(hex.slice(3, 5), 16) / 255,
      b = parseInt(hex.slice(5, 7), 16) / 255;
    const max = Math.max(r, g, b), min = Math.min(r, g, b), l = (max + min) / 2;
    if (max === min) return [0, 0, l];
    const d = max - min;
    const s = l > 0.5 ? d / (2 - max - min) : d / (max + min);
    const h = max === r ? (g - b) / d + (g < b ? 6 : 0) : max === g ? (b - r) / d + 2 : (r - g) / d + 4;
    return [h * 60, s, l];
  }

  function hslToHex(h, s, l) {
    const f = (n) => {
      const k = (n + h / 30) % 12;
      const c = l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1));
      return Math.round(255 * c).toString(16).padStart(2, "0");
    };
    return `#${f(0)}${f(8)}${f(4)}`;
  }

  /* The colour of line k of n that one run draws in one chart: the run's own colour for the first line, the
   * others spread around the colour wheel from it, so that "layer 0" and "layer 1" can be told apart. A grey
   * run colour (no hue to turn) gets a saturated one for its extra lines. */
  function lineColor(runColor, k, n) {
    if (k === 0 || n <= 1) return runColor;
    const [h, s, l] = hexToHsl(runColor);
    return hslToHex((h + (360 * k) / n) % 360, Math.max(s, 0.6), Math.min(Math.max(l, 0.35), 0.55));
  }

  /* A log axis shows positive values only: the others become gaps. */
  function forLogAxis(y) {
    return y.map((v) => (v != null && v > 0 ? v : null));
  }

  const api = { lineColor, forLogAxis, hexToHsl, hslToHex };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.DarkboardSeries = api;
})(typeof window !== "undefined" ? window : this);
