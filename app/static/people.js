/* The page for people (/app): text and files in, a batch submitted, its items followed live,
 * audio played and downloaded. Plain JavaScript, no library, no CDN; only the public API.
 *
 * Calls: GET /v1/voices, POST /v1/audio/speech (the voice preview), POST /v1/batches,
 * GET /v1/batches/{id} and /items (every second until the batch is finished),
 * GET /v1/jobs/{id}/audio (play, download) and GET /v1/batches/{id}/result (the zip).
 * When the API answers 401 the page asks for a key, keeps it in sessionStorage and sends it
 * as "Authorization: Bearer". 429 and 503 are retried after their Retry-After.
 *
 * For tests and scripts: <body data-state> is loading | needs-key | ready | sending | working | done,
 * each item row carries data-status (the API's status) and data-index.
 */
(function () {
  "use strict";

  var KEY_STORAGE = "tts-batch.api-key";
  var SAMPLE = "Hello! This is how I sound. I can read your text aloud.";
  var POLL_MS = 1000;
  var MAX_RETRIES = 30;
  var BATCH_DONE = { succeeded: true, partially_succeeded: true, failed: true, cancelled: true };
  var STATUS_WORDS = {
    queued: "Waiting", running: "Making audio…", succeeded: "Ready",
    failed: "Failed", cancelled: "Cancelled", expired: "Expired"
  };
  var TEXT_FILE = /\.(txt|text|md|markdown)$/i;
  var MARKDOWN_FILE = /\.(md|markdown)$/i;

  var body = document.body;
  var maxChars = Number(body.dataset.maxChars) || 100000;
  var maxItems = Number(body.dataset.maxItems) || 10000;
  var defaultVoice = body.dataset.defaultVoice || "";

  function $(id) { return document.getElementById(id); }
  var el = {
    notice: $("notice"), keyPanel: $("key-panel"), keyForm: $("key-form"), keyInput: $("key-input"),
    keyMessage: $("key-message"), keyState: $("key-state"), forgetKey: $("forget-key"),
    form: $("make-form"), text: $("text-input"), textName: $("text-name"), addText: $("add-text"),
    drop: $("drop-zone"), fileInput: $("file-input"), fileMessages: $("file-messages"),
    items: $("items"), itemsCount: $("items-count"),
    voice: $("voice"), preview: $("preview"), previewStatus: $("preview-status"), previewAudio: $("preview-audio"),
    format: $("format"), submit: $("submit"), submitStatus: $("submit-status"),
    results: $("results"), progress: $("progress"), progressText: $("progress-text"), rejected: $("rejected"),
    resultItems: $("result-items"), zip: $("download-zip"), startOver: $("start-over")
  };

  var items = [];          // what will be submitted: {key, name, text, markdown, kind}
  var nextKey = 1;
  var pastedCount = 0;
  var voices = [];
  var voicesLoaded = false;
  var previews = {};       // voice id -> blob URL of its preview
  var run = null;          // the submitted batch being followed
  var generation = 0;      // bumped by "Start again": a stale poll loop stops
  var memoryKey = null;    // when sessionStorage is not available

  function setState(state) { body.dataset.state = state; }
  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  // --- the API key --------------------------------------------------------------------------
  function getKey() {
    try { return window.sessionStorage.getItem(KEY_STORAGE) || memoryKey; } catch (e) { return memoryKey; }
  }
  function setKey(key) {
    memoryKey = key;
    try {
      if (key) { window.sessionStorage.setItem(KEY_STORAGE, key); } else { window.sessionStorage.removeItem(KEY_STORAGE); }
    } catch (e) { /* storage disabled: the key lives in memory until the page closes */ }
    el.keyState.hidden = !key;
  }

  var pendingKey = null;   // one prompt for every request that met a 401 at the same time
  function askForKey(message) {
    var previous = body.dataset.state;
    setState("needs-key");
    el.keyPanel.hidden = false;
    el.keyMessage.textContent = message || "";
    el.keyInput.value = "";
    el.keyInput.focus();
    if (!pendingKey) {
      var waiting = { previous: previous };
      waiting.promise = new Promise(function (resolve) { waiting.resolve = resolve; });
      pendingKey = waiting;
    }
    return pendingKey.promise;
  }
  el.keyForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var key = el.keyInput.value.trim();
    if (!key) { el.keyMessage.textContent = "Type or paste your key first."; return; }
    setKey(key);
    el.keyPanel.hidden = true;
    el.keyMessage.textContent = "";
    if (pendingKey) {
      var waiting = pendingKey;
      pendingKey = null;
      setState(waiting.previous === "needs-key" ? "loading" : waiting.previous);
      waiting.resolve();
    }
  });
  el.forgetKey.addEventListener("click", function () { setKey(null); });

  // --- talking to the API -------------------------------------------------------------------
  function ApiError(status, code, message, details) {
    this.status = status; this.code = code; this.message = message; this.details = details || {};
  }

  async function errorOf(response) {
    var details = {};
    try { details = (await response.json()).error || {}; } catch (e) { details = {}; }
    var message = details.message || ("the service answered " + response.status + " " + response.statusText);
    return new ApiError(response.status, details.code || "http_" + response.status, message, details);
  }

  function retryAfter(response) {
    var seconds = Number(response.headers.get("Retry-After"));
    return Math.min(60, Math.max(1, isFinite(seconds) && seconds > 0 ? seconds : 2));
  }

  function showNotice(message, busy) {
    el.notice.textContent = message;
    el.notice.className = busy ? "notice busy" : "notice";
    el.notice.hidden = !message;
  }

  /* fetch() with the key; asks for a key on 401, waits and retries on 429, 503 and network errors. */
  async function api(method, path, payload) {
    for (var attempt = 0; ; attempt++) {
      var headers = {};
      var key = getKey();
      if (key) { headers.Authorization = "Bearer " + key; }
      var init = { method: method, headers: headers, cache: "no-store" };
      if (payload !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(payload);
      }
      var response;
      try {
        response = await fetch(path, init);
      } catch (networkError) {
        if (attempt >= MAX_RETRIES) { throw new ApiError(0, "unreachable", "the service cannot be reached"); }
        showNotice("Cannot reach the service. Trying again in 3 seconds…", true);
        await sleep(3000);
        continue;
      }
      if (response.status === 401) {
        var refused = await errorOf(response);
        setKey(null);
        await askForKey(key ? "That key was not accepted: " + refused.message + ". Check it and try again." : "");
        continue;
      }
      if ((response.status === 429 || response.status === 503) && attempt < MAX_RETRIES) {
        var wait = retryAfter(response);
        var why = await errorOf(response);
        showNotice("The service is busy, retrying in " + wait + " s… (" + why.message + ")", true);
        await sleep(wait * 1000);
        continue;
      }
      if (el.notice.classList.contains("busy")) { showNotice(""); }
      if (!response.ok) { throw await errorOf(response); }
      return response;
    }
  }

  // --- voices and the preview ---------------------------------------------------------------
  var languageNames = null;
  try { languageNames = new Intl.DisplayNames(["en"], { type: "language" }); } catch (e) { languageNames = null; }
  function languageName(code) {
    if (!code) { return "Other"; }
    try { return (languageNames && languageNames.of(code)) || code; } catch (e) { return code; }
  }

  async function loadVoices() {
    var response = await api("GET", "/v1/voices");
    voices = (await response.json()).voices || [];
    el.voice.textContent = "";
    var groups = {};
    voices.forEach(function (v) {
      var language = languageName(v.language);
      if (!groups[language]) {
        groups[language] = document.createElement("optgroup");
        groups[language].label = language;
        el.voice.appendChild(groups[language]);
      }
      var option = document.createElement("option");
      option.value = v.id;
      option.textContent = v.name + (v.gender ? " (" + v.gender + ")" : "");
      if (v.id === defaultVoice) { option.selected = true; }
      groups[language].appendChild(option);
    });
    el.voice.disabled = voices.length === 0;
    el.preview.disabled = voices.length === 0;
    voicesLoaded = true;
    setState("ready");
    updateSubmit();
  }

  function voiceName(id) {
    var v = voices.filter(function (x) { return x.id === id; })[0];
    return v ? v.name : id;
  }

  async function playAudio(audio, url) {
    if (audio.src !== url) { audio.src = url; }
    audio.hidden = false;
    try { await audio.play(); return true; } catch (e) { return false; }
  }

  el.preview.addEventListener("click", async function () {
    var voice = el.voice.value;
    el.preview.disabled = true;
    el.previewStatus.textContent = "Getting a preview of " + voiceName(voice) + "…";
    try {
      if (!previews[voice]) {
        var response = await api("POST", "/v1/audio/speech",
          { model: "tts-batch", input: SAMPLE, voice: voice, response_format: "wav" });
        previews[voice] = URL.createObjectURL(await response.blob());
      }
      var playing = await playAudio(el.previewAudio, previews[voice]);
      el.previewStatus.textContent = playing ? "Playing " + voiceName(voice) + "." : "Press play to listen.";
    } catch (error) {
      el.previewStatus.textContent = "No preview: " + error.message;
    } finally {
      el.preview.disabled = false;
    }
  });
  el.voice.addEventListener("change", function () { el.previewStatus.textContent = ""; });
  el.previewAudio.addEventListener("ended", function () { el.previewStatus.textContent = ""; });

  // --- the list of texts --------------------------------------------------------------------
  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

  function renderItems() {
    el.items.textContent = "";
    items.forEach(function (item) {
      var li = document.createElement("li");
      li.dataset.name = item.name;
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = item.name;
      var meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = (item.kind === "pasted" ? "typed text" : item.markdown ? "Markdown file" : "text file") +
        ", " + plural(item.text.length, "character", "characters");
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "small";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove " + item.name);
      remove.addEventListener("click", function () {
        items = items.filter(function (x) { return x.key !== item.key; });
        renderItems();
        el.text.focus();
      });
      li.append(name, meta, remove);
      el.items.appendChild(li);
    });
    el.itemsCount.textContent = items.length ? "(" + plural(items.length, "audio file", "audio files") + ")" : "(nothing yet)";
    el.drop.dataset.files = String(items.length);
    updateSubmit();
  }

  function addItem(name, text, markdown, kind) {
    if (items.length >= maxItems) { return "at most " + maxItems + " texts can go in at once"; }
    items.push({ key: nextKey++, name: name.slice(0, 200), text: text, markdown: markdown, kind: kind });
    return null;
  }

  function fileMessage(text) {
    var li = document.createElement("li");
    li.className = "bad";
    li.textContent = text;
    el.fileMessages.appendChild(li);
  }

  function addPasted() {
    var text = el.text.value;
    if (!text.trim()) { return false; }
    if (text.length > maxChars) {
      fileMessage("The typed text is too long: " + text.length + " characters; at most " + maxChars + " fit in one file.");
      return false;
    }
    pastedCount += 1;
    var name = el.textName.value.trim().replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, " ") ||
      (pastedCount === 1 ? "My text" : "My text " + pastedCount);
    var problem = addItem(name, text, false, "pasted");
    if (problem) { fileMessage("The typed text was not added: " + problem + "."); return false; }
    el.text.value = "";
    el.textName.value = "";
    renderItems();
    return true;
  }

  el.addText.addEventListener("click", function () {
    el.fileMessages.textContent = "";
    if (!addPasted()) {
      if (!el.text.value.trim()) { fileMessage("Type or paste some text first."); }
      el.text.focus();
    }
  });
  el.text.addEventListener("input", updateSubmit);

  async function readFile(file) {
    if (!TEXT_FILE.test(file.name)) { return file.name + " was not added: only .txt and .md files can be read aloud."; }
    if (file.size === 0) { return file.name + " was not added: it is empty."; }
    if (file.size > maxChars * 4) { return file.name + " was not added: it is too large for one audio file."; }
    var bytes = new Uint8Array(await file.arrayBuffer());
    if (bytes.indexOf(0) !== -1) { return file.name + " was not added: it is not a text file (it holds binary data)."; }
    var text;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch (e) {
      return file.name + " was not added: it is not UTF-8 text. Save it as UTF-8 and add it again.";
    }
    if (!text.trim()) { return file.name + " was not added: it has no words in it."; }
    if (text.length > maxChars) {
      return file.name + " was not added: it has " + text.length + " characters; at most " + maxChars + " fit in one file.";
    }
    var stem = file.name.replace(/\.[^.]*$/, "") || file.name;
    var problem = addItem(stem, text, MARKDOWN_FILE.test(file.name), "file");
    return problem ? file.name + " was not added: " + problem + "." : null;
  }

  async function addFiles(files) {
    el.fileMessages.textContent = "";
    var list = Array.prototype.slice.call(files || []);
    for (var i = 0; i < list.length; i++) {
      var problem = await readFile(list[i]);
      if (problem) { fileMessage(problem); }
    }
    renderItems();
  }

  el.fileInput.addEventListener("change", function () {
    addFiles(el.fileInput.files).then(function () { el.fileInput.value = ""; });
  });
  ["dragenter", "dragover"].forEach(function (type) {
    document.addEventListener(type, function (event) {
      event.preventDefault();
      el.drop.classList.add("over");
    });
  });
  document.addEventListener("dragleave", function (event) {
    if (event.target === document.documentElement || event.target === el.drop) { el.drop.classList.remove("over"); }
  });
  document.addEventListener("drop", function (event) {  // a drop anywhere on the page adds the files
    event.preventDefault();
    el.drop.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files.length) {
      addFiles(event.dataTransfer.files);
    }
  });

  function updateSubmit() {
    var busy = run !== null && !run.finished;  // one batch at a time; a finished one may be followed by another
    el.submit.disabled = !voicesLoaded || busy || (items.length === 0 && !el.text.value.trim());
  }

  // --- submitting and following the batch ---------------------------------------------------
  function safeFileName(name, extension) {
    var base = String(name || "audio").replace(/[\\/:*?"<>|\u0000-\u001f\u007f]+/g, "_").replace(/^\.+/, "").trim();
    return (base || "audio") + "." + extension;
  }

  function save(url, filename) {
    var link = document.createElement("a");
    link.href = url;
    link.download = filename;
    link.hidden = true;
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  el.form.addEventListener("submit", async function (event) {
    event.preventDefault();
    el.fileMessages.textContent = "";
    if (el.text.value.trim()) { addPasted(); }
    if (items.length === 0) { el.submitStatus.textContent = "Add some text or a file first."; return; }
    var format = el.format.value;
    var submitted = items.slice();
    var payload = {
      inputs: submitted.map(function (item) { return { text: item.text, name: item.name, markdown: item.markdown }; }),
      defaults: { voice: el.voice.value, format: format }
    };
    if (run) { generation += 1; forget(run); }  // a new batch replaces the finished one on the page
    run = { id: null, format: format, names: submitted.map(function (i) { return i.name; }), rows: {}, audio: {},
            finished: false };
    updateSubmit();
    setState("sending");
    el.submitStatus.textContent = "Sending " + plural(submitted.length, "text", "texts") + "…";
    var batch;
    try {
      batch = await (await api("POST", "/v1/batches", payload)).json();
    } catch (error) {
      run = null;
      setState("ready");
      updateSubmit();
      el.submitStatus.textContent = "";
      var reasons = (error.details && error.details.errors) || [];
      if (reasons.length && error.code === "invalid_batch") {
        fileMessage("Nothing could be read aloud:");
        reasons.forEach(function (r) {  // invalid_batch: {index, error}; a refused body: {param, message}
          var why = (r.error && r.error.message) || r.message || "refused";
          if (typeof r.index !== "number") { fileMessage(why); return; }
          fileMessage((submitted[r.index] ? submitted[r.index].name : "Text " + (r.index + 1)) + ": " + why);
        });
      } else {
        fileMessage("Not sent: " + error.message);
      }
      return;
    }
    run.id = batch.id;
    el.submitStatus.textContent = "Sent.";
    items = [];
    renderItems();
    startResults(batch);
  });

  function startResults(batch) {
    setState("working");
    el.results.hidden = false;
    el.results.dataset.batchId = batch.id;
    el.resultItems.textContent = "";
    el.rejected.textContent = "";
    el.zip.disabled = true;
    (batch.rejected || []).forEach(function (r) {
      var li = document.createElement("li");
      li.className = "bad";
      li.textContent = (r.name || run.names[r.index] || "Text " + (r.index + 1)) + " was refused: " +
        ((r.error && r.error.message) || "no reason given");
      el.rejected.appendChild(li);
    });
    renderBatch(batch, []);
    var heading = $("results-title");
    heading.tabIndex = -1;
    heading.focus();
    follow(run, generation);
  }

  async function fetchItems(batchId) {
    var all = [];
    var cursor = null;
    do {
      var path = "/v1/batches/" + batchId + "/items?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      var page = await (await api("GET", path)).json();
      all = all.concat(page.items || []);
      cursor = page.next_cursor;
    } while (cursor);
    return all;
  }

  async function follow(current, gen) {
    while (gen === generation) {
      try {
        var batch = await (await api("GET", "/v1/batches/" + current.id)).json();
        var list = await fetchItems(current.id);
        if (gen !== generation) { return; }
        renderBatch(batch, list);
        if (BATCH_DONE[batch.status]) { finish(batch); return; }
      } catch (error) {
        if (gen !== generation) { return; }
        showNotice("Could not check on your audio: " + error.message + ". Trying again…", true);
      }
      await sleep(POLL_MS);
    }
  }

  function progressWords(counts) {
    var ready = counts.succeeded || 0;
    var total = counts.total || 0;
    var failed = (counts.failed || 0) + (counts.cancelled || 0);  // expired: said on its own below
    var parts = [ready + " of " + total + " ready"];
    if (counts.running) { parts.push(counts.running + " in progress"); }
    if (counts.queued) { parts.push(counts.queued + " waiting"); }
    if (failed) { parts.push(failed + " failed"); }
    if (counts.expired) { parts.push(counts.expired + " expired"); }
    return parts.join(", ");
  }

  function setText(node, text) { if (node.textContent !== text) { node.textContent = text; } }

  /* Counts from the item list when there is one (so the words match the rows), else the batch's. */
  function countsOf(batch, list) {
    if (!list.length) { return batch.counts || {}; }
    var counts = { total: Math.max(list.length, (batch.counts || {}).total || 0) };
    list.forEach(function (item) { counts[item.status] = (counts[item.status] || 0) + 1; });
    return counts;
  }

  function renderBatch(batch, list) {
    var counts = countsOf(batch, list);
    var finished = (counts.succeeded || 0) + (counts.failed || 0) + (counts.cancelled || 0) + (counts.expired || 0);
    el.progress.value = counts.total ? Math.round(100 * finished / counts.total) : 0;
    setText(el.progressText, (BATCH_DONE[batch.status] ? "Finished: " : "Working: ") + progressWords(counts) + ".");
    list.forEach(renderRow);
  }

  function renderRow(item) {
    var row = run.rows[item.index];
    if (!row) {
      row = document.createElement("li");
      row.dataset.index = String(item.index);
      row.dataset.jobId = item.id;
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = item.name || run.names[item.index] || "Text " + (item.index + 1);
      var status = document.createElement("span");
      status.className = "status";
      var meta = document.createElement("span");
      meta.className = "meta";
      var actions = document.createElement("span");
      actions.className = "actions";
      var error = document.createElement("span");
      error.className = "error";
      error.hidden = true;
      row.append(name, status, meta, actions, error);
      el.resultItems.appendChild(row);
      run.rows[item.index] = row;
    }
    if (row.dataset.status === item.status) { return; }
    row.dataset.status = item.status;
    var badge = row.querySelector(".status");
    badge.className = "status status-" + item.status;
    badge.textContent = STATUS_WORDS[item.status] || item.status;
    var metaNode = row.querySelector(".meta");
    metaNode.textContent = item.status === "succeeded" && item.duration_seconds ?
      item.duration_seconds.toFixed(1) + " s of audio" : "";
    var errorNode = row.querySelector(".error");
    errorNode.hidden = !item.error;
    errorNode.textContent = item.error ? "Why: " + item.error.message : "";
    if (item.status === "succeeded") { addActions(row, item); }
  }

  async function itemAudio(item) {
    if (!run.audio[item.id]) {
      var response = await api("GET", "/v1/jobs/" + item.id + "/audio");
      run.audio[item.id] = URL.createObjectURL(await response.blob());
    }
    return run.audio[item.id];
  }

  function addActions(row, item) {
    var actions = row.querySelector(".actions");
    var label = row.querySelector(".name").textContent;
    var play = document.createElement("button");
    play.type = "button";
    play.className = "small play";
    play.textContent = "Play";
    play.setAttribute("aria-label", "Play " + label);
    var download = document.createElement("button");
    download.type = "button";
    download.className = "small download";
    download.textContent = "Download";
    download.setAttribute("aria-label", "Download " + label);
    var audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.hidden = true;
    audio.setAttribute("aria-label", "Audio of " + label);
    play.addEventListener("click", async function () {
      play.disabled = true;
      try {
        await playAudio(audio, await itemAudio(item));
      } catch (error) {
        row.querySelector(".error").hidden = false;
        row.querySelector(".error").textContent = "Cannot play it: " + error.message;
      } finally {
        play.disabled = false;
      }
    });
    download.addEventListener("click", async function () {
      download.disabled = true;
      try {
        save(await itemAudio(item), safeFileName(item.name || "item-" + (item.index + 1), run.format));
      } catch (error) {
        row.querySelector(".error").hidden = false;
        row.querySelector(".error").textContent = "Cannot download it: " + error.message;
      } finally {
        download.disabled = false;
      }
    });
    actions.append(play, download);
    row.appendChild(audio);
  }

  function finish(batch) {
    run.finished = true;
    setState("done");
    updateSubmit();
    var counts = batch.counts || {};
    el.zip.disabled = !(counts.succeeded > 0);
    el.submitStatus.textContent = "";
    if (el.notice.classList.contains("busy")) { showNotice(""); }
  }

  el.zip.addEventListener("click", async function () {
    if (!run || !run.id) { return; }
    el.zip.disabled = true;
    var label = el.zip.textContent;
    el.zip.textContent = "Preparing the zip…";
    try {
      var response = await api("GET", "/v1/batches/" + run.id + "/result");
      var url = URL.createObjectURL(await response.blob());
      save(url, "audio-" + run.id.slice(0, 8) + ".zip");
      setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
    } catch (error) {
      showNotice("The zip could not be downloaded: " + error.message, false);
    } finally {
      el.zip.textContent = label;
      el.zip.disabled = false;
    }
  });

  function forget(old) {
    Object.keys(old.audio).forEach(function (id) { URL.revokeObjectURL(old.audio[id]); });
  }

  el.startOver.addEventListener("click", function () {
    generation += 1;
    if (run) { forget(run); }
    run = null;
    el.results.hidden = true;
    el.resultItems.textContent = "";
    el.rejected.textContent = "";
    el.submitStatus.textContent = "";
    setState(voicesLoaded ? "ready" : "loading");
    updateSubmit();
    el.text.focus();
  });

  // --- start --------------------------------------------------------------------------------
  el.keyState.hidden = !getKey();
  renderItems();
  loadVoices().catch(function (error) {
    showNotice("The voices could not be loaded: " + error.message, false);
    el.voice.textContent = "";
    var option = document.createElement("option");
    option.textContent = "No voices";
    el.voice.appendChild(option);
  });
}());
