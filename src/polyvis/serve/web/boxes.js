// polyvis web page: boxes in answers, drawn over the image (app.js calls drawBoxes).
"use strict";

// Boxes "[x1, y1, x2, y2]" in an answer are pixels of the image the model was given (the one
// this page sent, already scaled to MAX_SIDE), or, for a model served with --box-format
// norm1000, 0-1000 of its width and height: drawn over it on a canvas below the answer.
const BOX = /\[\s*([-+]?[\d.]+)\s*,\s*([-+]?[\d.]+)\s*,\s*([-+]?[\d.]+)\s*,\s*([-+]?[\d.]+)\s*\]/g;

function lastImage(messages) {
  for (let i = messages.length - 1; i >= 0; i -= 1) {
    const content = messages[i].content;
    if (!Array.isArray(content)) continue;
    const part = content.find((p) => p.type === "image_url");
    if (part) return part.image_url.url;
  }
  return null;
}

function drawBoxes(answer, text, url, format) {
  const found = [...text.matchAll(BOX)].map((m) => m.slice(1, 5).map(Number));
  if (!url || !found.length || found.some((b) => b.some(Number.isNaN))) return;
  const img = new Image();
  img.onload = () => {
    const sx = format === "norm1000" ? img.naturalWidth / 1000 : 1;
    const sy = format === "norm1000" ? img.naturalHeight / 1000 : 1;
    const boxes = found.map(([x1, y1, x2, y2]) => [x1 * sx, y1 * sy, x2 * sx, y2 * sy]);
    const canvas = element("canvas", "boxes");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.classList.toggle("small", img.naturalWidth < 96);
    canvas.dataset.boxes = String(boxes.length);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    ctx.strokeStyle = "#ff00ff"; // as the reports and `polyvis chat --draw-boxes` draw them
    const w = Math.max(1, Math.round(Math.max(canvas.width, canvas.height) / 150));
    ctx.lineWidth = w;
    for (const [x1, y1, x2, y2] of boxes) {
      // pixels x1..x2 inclusive, the line inside them (as PIL draws): crisp, not smeared
      const left = Math.round(Math.min(x1, x2)), top = Math.round(Math.min(y1, y2));
      const width = Math.round(Math.abs(x2 - x1)) + 1, height = Math.round(Math.abs(y2 - y1)) + 1;
      ctx.strokeRect(left + w / 2, top + w / 2, Math.max(0, width - w), Math.max(0, height - w));
    }
    answer.box.insertBefore(canvas, answer.meta);
  };
  img.src = url;
}
