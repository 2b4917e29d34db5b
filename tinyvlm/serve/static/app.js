// The page talks to the server's own moondream-style endpoints, streamed: /v1/caption and /v1/query
// with "stream": true answer Server-Sent Events, read here with fetch and a ReadableStream.
"use strict";
const $ = (id) => document.getElementById(id);
let picture = null; // the chosen picture, as a data URL

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function choose(file) {
  if (!file || !file.type.startsWith("image/")) {
    say("That is not a picture.", true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    picture = reader.result;
    $("preview").src = picture;
    $("preview").hidden = false;
    $("drop-text").hidden = true;
    $("go").disabled = false;
    say("");
  };
  reader.readAsDataURL(file);
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  choose(e.dataTransfer.files[0]);
});
for (const radio of document.querySelectorAll("input[name=task]")) {
  radio.addEventListener("change", () => { $("question").disabled = radio.value !== "question" || !radio.checked; });
}
$("key").value = localStorage.getItem("tinyvlm-key") || "";

function request() {
  const task = document.querySelector("input[name=task]:checked").value;
  if (task === "question") {
    return ["/v1/query", { image_url: picture, question: $("question").value, stream: true }];
  }
  return ["/v1/caption", { image_url: picture, length: task, stream: true }];
}

function handle(event) {
  if (event.error) throw new Error(event.error.message);
  if (event.chunk) $("answer").textContent += event.chunk;
  if (event.completed) {
    const n = event.usage.completion_tokens;
    say(`Done: ${n} token${n === 1 ? "" : "s"}` + (event.finish_reason === "length" ? " (the limit)" : "") + ".");
  }
}

async function run() {
  const [path, body] = request();
  const headers = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  localStorage.setItem("tinyvlm-key", key);
  if (key) headers.Authorization = `Bearer ${key}`;
  $("answer").textContent = "";
  $("go").disabled = true;
  say("Writing…");
  try {
    const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    if (!response.ok) {
      const problem = await response.json().catch(() => null);
      throw new Error(problem && problem.error ? problem.error.message : `HTTP ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) { // one SSE event: its data: lines
        const lines = buffer.slice(0, end).split("\n");
        buffer = buffer.slice(end + 2);
        for (const line of lines) if (line.startsWith("data: ")) handle(JSON.parse(line.slice(6)));
      }
    }
  } catch (err) {
    say(err.message, true);
  } finally {
    $("go").disabled = false;
  }
}
$("go").addEventListener("click", run);
