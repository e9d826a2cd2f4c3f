// The polyvis chat page: one more client of /v1/chat/completions (streamed, server-sent events).
// Chat mode talks to one model; compare mode sends each question to several models at once and
// shows their answers in columns, each column a conversation of its own.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SIDE = 1024; // larger images are scaled down here: the models see a few hundred pixels
const KEY_STORE = "polyvis.apiKey"; // per browser tab (sessionStorage), never sent elsewhere

// ready: the status line while all is well (the models served), put back once an error is past
const state = {
  mode: "chat", models: [], boxFormats: {}, panes: [], image: null, busy: 0, ready: "",
};

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
  } catch (_) { /* not JSON: fall through */ }
  return `${resp.status} ${resp.statusText}`;
}

// ---- models -------------------------------------------------------------------------------

async function loadModels() {
  let resp;
  try {
    resp = await fetch("v1/models", { headers: headers() });
  } catch (err) {
    return failModels("cannot reach the server: " + err.message);
  }
  if (resp.status === 401) {
    const given = $("api-key").value.trim() !== "";
    return failModels(given ? "wrong API key" : "this server needs an API key: enter it above");
  }
  if (!resp.ok) return failModels(await errorText(resp));
  const cards = (await resp.json()).data;
  state.models = cards.map((m) => m.id);
  state.boxFormats = Object.fromEntries(cards.map((m) => [m.id, m.box_format || "pixels"]));
  state.ready = `${state.models.length} model${state.models.length === 1 ? "" : "s"}: ` +
    state.models.join(", ");
  setStatus(state.ready);
  renderModelChoices();
  resetPanes();
}

function failModels(message) {
  state.models = [];
  renderModelChoices();
  resetPanes();
  setStatus(message, true);
}

function renderModelChoices() {
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...state.models.map((id) => new Option(id, id)));
  if (state.models.includes(previous)) select.value = previous;
  $("model-checks").replaceChildren(...state.models.map((id) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = id;
    box.checked = true;
    box.addEventListener("change", resetPanes);
    label.append(box, document.createTextNode(id));
    return label;
  }));
}

function chosenModels() {
  if (state.mode === "chat") return $("model").value ? [$("model").value] : [];
  return [...$("model-checks").querySelectorAll("input:checked")].map((b) => b.value);
}

// ---- panes: one conversation per model --------------------------------------------------------

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function makePane(model) {
  const el = element("article", "pane");
  el.dataset.model = model;
  const head = element("header");
  head.append(element("h2", "", model), element("span", "stats"));
  const log = element("div", "log");
  el.append(head, log);
  return { model, messages: [], el, log, controller: null };
}

function resetPanes() {
  stopAll();
  state.panes = chosenModels().map(makePane);
  $("panes").replaceChildren(...state.panes.map((p) => p.el));
  $("panes").dataset.count = String(state.panes.length);
}

function setMode(mode) {
  state.mode = mode;
  for (const b of document.querySelectorAll(".mode")) {
    b.classList.toggle("active", b.dataset.mode === mode);
  }
  $("chat-model").hidden = mode !== "chat";
  $("compare-models").hidden = mode !== "compare";
  resetPanes();
}

function addUserMessage(pane, message) {
  const box = element("div", "msg user");
  for (const part of message.content) {
    if (part.type === "image_url") {
      const img = element("img");
      img.onload = () => img.classList.toggle("small", img.naturalWidth < 96);
      img.src = part.image_url.url;
      img.alt = "your image";
      box.append(img);
    } else {
      box.append(element("span", "text", part.text));
    }
  }
  pane.log.append(box);
}

function addAnswer(pane) {
  const box = element("div", "msg assistant streaming");
  box.dataset.state = "streaming";
  const text = element("span", "text");
  const meta = element("span", "meta");
  box.append(text, meta);
  pane.log.append(box);
  return { box, text, meta };
}

// ---- asking ----------------------------------------------------------------------------------

function sampling() {
  const out = {};
  const t = parseFloat($("temperature").value);
  const p = parseFloat($("top-p").value);
  const m = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(t)) out.temperature = t;
  if (!Number.isNaN(p)) out.top_p = p;
  if (!Number.isNaN(m)) out.max_tokens = m;
  return out;
}

function setBusy(delta) {
  state.busy += delta;
  $("send").disabled = state.busy > 0;
  $("stop").disabled = state.busy === 0;
}

function stopAll() {
  for (const pane of state.panes) if (pane.controller) pane.controller.abort();
}

async function send() {
  const text = $("question").value.trim();
  if (state.busy) return;
  if (!text) return setStatus("type a question first", true);
  if (!state.panes.length) return setStatus("no model chosen", true);
  setStatus(state.ready); // an earlier complaint ("type a question first") no longer holds
  const content = [];
  if (state.image) content.push({ type: "image_url", image_url: { url: state.image } });
  content.push({ type: "text", text });
  clearImage();
  $("question").value = "";
  await Promise.all(state.panes.map((pane) => ask(pane, { role: "user", content })));
}

// Reads the server-sent events of one streamed answer; calls onChunk for each JSON chunk.
async function readEvents(resp, onChunk) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }
}

async function ask(pane, message) {
  pane.messages.push(message);
  addUserMessage(pane, message);
  const answer = addAnswer(pane);
  pane.log.scrollTop = pane.log.scrollHeight;
  const body = {
    model: pane.model, messages: pane.messages, stream: true,
    stream_options: { include_usage: true }, ...sampling(),
  };
  const controller = new AbortController();
  pane.controller = controller;
  setBusy(+1);
  const t0 = performance.now();
  let first = null, text = "", finish = null, usage = null, deltas = 0;
  try {
    const resp = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    }).catch((err) => {
      if (err.name === "AbortError") throw err;
      throw new Error("cannot reach the server: " + err.message); // not "Failed to fetch" alone
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        if (first === null) first = performance.now();
        text += piece;
        deltas += 1;
        answer.text.textContent = text;
        pane.log.scrollTop = pane.log.scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    finishAnswer(answer, "done", finish);
    drawBoxes(answer, text, lastImage(pane.messages), state.boxFormats[pane.model]);
  } catch (err) {
    const stopped = err.name === "AbortError";
    if (stopped) finish = "stopped"; // said under the answer, as "stopped at max tokens" is
    finishAnswer(answer, stopped ? "stopped" : "error", stopped ? "stopped" : null);
    if (!stopped) answer.text.textContent = text ? `${text}\n${err.message}` : err.message;
    if (!stopped && !text) {
      pane.messages.pop(); // a refused question leaves the conversation as it was
      answer.box.dataset.state = "error";
      return;
    }
  } finally {
    controller.abort(); // closes the stream when an error chunk ended it early; else a no-op
    pane.controller = null;
    setBusy(-1);
    const done = performance.now();
    answer.box.dataset.tFirst = first === null ? "" : (first - t0).toFixed(1);
    answer.box.dataset.tDone = (done - t0).toFixed(1);
    answer.box.dataset.deltas = String(deltas);
    if (usage) answer.box.dataset.completionTokens = String(usage.completion_tokens);
    answer.meta.textContent = timing(first, done, t0, usage, finish);
    pane.log.scrollTop = pane.log.scrollHeight; // the error or the timing line just added
  }
  pane.messages.push({ role: "assistant", content: text });
}

function finishAnswer(answer, how, finish) {
  answer.box.classList.remove("streaming");
  answer.box.classList.toggle("error", how === "error");
  answer.box.dataset.state = how;
  if (finish) answer.box.dataset.finishReason = finish;
}

function timing(first, done, t0, usage, finish) {
  const parts = [];
  if (first !== null) parts.push(`first token ${((first - t0) / 1000).toFixed(2)} s`);
  const tokens = usage ? `${usage.completion_tokens} tokens in ` : "";
  parts.push(`${tokens}${((done - t0) / 1000).toFixed(2)} s`);
  if (finish) parts.push(finish === "length" ? "stopped at max tokens" : finish);
  return parts.join(" \u00b7 ");
}

// ---- the image: picked, pasted or dropped -------------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Scales an image down to MAX_SIDE; one the browser cannot draw is sent as it is (the server
// says what is wrong with it).
function shrink(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const side = Math.max(img.naturalWidth, img.naturalHeight);
      if (side <= MAX_SIDE) return resolve(url);
      const scale = MAX_SIDE / side;
      const canvas = document.createElement("canvas");
      canvas.width = Math.round(img.naturalWidth * scale);
      canvas.height = Math.round(img.naturalHeight * scale);
      canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
      resolve(canvas.toDataURL("image/png"));
    };
    img.onerror = () => resolve(url);
    img.src = url;
  });
}

async function attach(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) return setStatus(`${file.name} is not an image`, true);
  state.image = await shrink(await readAsDataURL(file));
  $("preview").onload = () => $("preview").classList.toggle("small", $("preview").naturalWidth < 56);
  $("preview").src = state.image;
  $("preview").hidden = false;
  $("remove-image").hidden = false;
}

function clearImage() {
  state.image = null;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("remove-image").hidden = true;
  $("image-input").value = "";
}

// ---- wiring ----------------------------------------------------------------------------------

function start() {
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    loadModels();
  });
  for (const b of document.querySelectorAll(".mode")) {
    b.addEventListener("click", () => setMode(b.dataset.mode));
  }
  $("model").addEventListener("change", resetPanes);
  $("new-chat").addEventListener("click", resetPanes);
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", stopAll);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("image-input").addEventListener("change", (e) => attach(e.target.files[0]));
  $("remove-image").addEventListener("click", clearImage);
  document.addEventListener("paste", (e) => {
    const items = e.clipboardData ? [...e.clipboardData.items] : [];
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) {
      e.preventDefault();
      attach(item.getAsFile());
    }
  });
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    if (e.dataTransfer.files.length) attach(e.dataTransfer.files[0]);
  });
  loadModels();
}

start();
