"""The page `lstmkit serve` shows at /: one self-contained HTML file (no outside resources),
to sample with the text streaming in and to score pasted text line by line."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lstmkit</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f6f3; color: #222; }
  header { background: #23395b; color: #fff; padding: 10px 24px; }
  header h1 { font-size: 19px; margin: 0; display: inline; }
  header span { opacity: .8; margin-left: 12px; font-size: 13px; }
  main { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; padding: 20px 24px; }
  section { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 14px 16px; }
  h2 { font-size: 16px; margin: 0 0 10px; }
  textarea { width: 100%; box-sizing: border-box; font: 14px/1.4 ui-monospace, monospace; }
  .row { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; align-items: end; }
  label { font-size: 12px; color: #555; display: flex; flex-direction: column; }
  input { width: 80px; font-size: 14px; }
  button { background: #23395b; color: #fff; border: 0; border-radius: 5px;
           padding: 7px 16px; font-size: 14px; cursor: pointer; }
  button:disabled { opacity: .5; }
  pre { white-space: pre-wrap; background: #fbfbf8; border: 1px solid #eee; min-height: 160px;
        padding: 10px; font: 14px/1.4 ui-monospace, monospace; margin: 8px 0 0; }
  .error { color: #b00020; min-height: 1.2em; font-size: 13px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; margin-top: 8px; }
  td, th { border-bottom: 1px solid #eee; padding: 3px 6px; text-align: right; }
  td:first-child, th:first-child { text-align: left; }
  .total { font-weight: 600; margin-top: 8px; }
</style>
</head>
<body>
<header><h1>lstmkit</h1><span id="model">loading...</span></header>
<main>
<section>
  <h2>Sample</h2>
  <textarea id="prime" rows="3" placeholder="prime: text to start from (optional)"></textarea>
  <div class="row">
    <label>length <input id="length" type="number" min="0" value="200"></label>
    <label>temperature <input id="temperature" type="number" min="0" step="0.1" value="0.8">
    </label>
    <label>top-k <input id="top_k" type="number" min="1" placeholder="all"></label>
    <label>top-p <input id="top_p" type="number" min="0.01" max="1" step="0.05"
      placeholder="1"></label>
    <label>seed <input id="seed" type="number" min="0" placeholder="random"></label>
    <button id="sample">Sample</button>
  </div>
  <div class="error" id="sample_error"></div>
  <pre id="output"></pre>
</section>
<section>
  <h2>Score</h2>
  <textarea id="text" rows="6" placeholder="paste text to score, one sentence a line"></textarea>
  <div class="row"><button id="score">Score</button></div>
  <div class="error" id="score_error"></div>
  <div class="total" id="total"></div>
  <table id="lines"></table>
</section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const number = (id) => $(id).value === "" ? null : Number($(id).value);

fetch("/health").then((r) => r.json()).then((h) => {
  $("model").textContent = `${h.level}-level ${h.cell.toUpperCase()}, ${h.num_layers} x ` +
    `${h.hidden_size}, ${h.vocab_size.toLocaleString()} tokens` +
    (h.quantize ? `, ${h.quantize}` : "");
  $("length").value = h.level === "char" ? 300 : 60;
  fromAddress();
});

// /?prime=...&seed=...&text=...&run=1 fills the form (and runs it): links that show a sample.
function fromAddress() {
  const params = new URLSearchParams(location.search);
  for (const id of ["prime", "length", "temperature", "top_k", "top_p", "seed", "text"]) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  if (params.get("run") === "1") {
    $("sample").click();
    if ($("text").value) $("score").click();
  }
}

async function errorOf(response) {
  try { return (await response.json()).error; } catch (e) { return response.statusText; }
}

$("sample").onclick = async () => {
  const body = {prime: $("prime").value, length: number("length"),
    temperature: number("temperature") ?? 1, top_k: number("top_k"), top_p: number("top_p"),
    seed: number("seed")};
  $("sample").disabled = true;
  $("sample_error").textContent = "";
  const out = $("output");
  out.textContent = "";
  const drawn = document.createTextNode("");
  out.appendChild(drawn);
  try {
    const response = await fetch("/sample", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    if (!response.ok) { $("sample_error").textContent = await errorOf(response); return; }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        drawn.appendData(JSON.parse(event.slice(6)).text);
      }
    }
  } catch (e) {
    $("sample_error").textContent = String(e);
  } finally {
    $("sample").disabled = false;
  }
};

$("score").onclick = async () => {
  $("score_error").textContent = "";
  $("total").textContent = "";
  $("lines").innerHTML = "";
  const response = await fetch("/score", {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({text: $("text").value})});
  if (!response.ok) { $("score_error").textContent = await errorOf(response); return; }
  const s = await response.json();
  $("total").textContent = `${s.tokens} tokens scored: log-probability ` +
    `${s.logprob_nats.toFixed(3)} nats, perplexity ${s.perplexity.toFixed(2)}`;
  const lines = $("text").value.split("\\n");
  const rows = [["line", "text", "tokens", "log-prob (nats)", "perplexity"]];
  for (const line of s.lines || []) {
    rows.push([line.line, (lines[line.line - 1] || "").slice(0, 40), line.tokens,
               line.logprob_nats.toFixed(3),
               line.perplexity === null ? "-" : line.perplexity.toFixed(2)]);
  }
  rows.forEach((cells, i) => {
    const tr = $("lines").insertRow();
    cells.forEach((c) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      cell.textContent = c;
      tr.appendChild(cell);
    });
  });
};
</script>
</body>
</html>
"""
