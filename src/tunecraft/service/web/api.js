// The dashboard's only way to the server: the service's REST API, with the API key the user
// typed once (kept in this tab's sessionStorage, never in a cookie or on disk).
const KEY = "tunecraft.apiKey";

export class AuthError extends Error {}

export function apiKey() { return sessionStorage.getItem(KEY) || ""; }
export function setApiKey(key) { if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY); }

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function answer(res) {
  if (res.status === 401) throw new AuthError("the API key is missing or wrong");
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new Error((body && body.error && body.error.message) || `HTTP ${res.status}`);
  return body;
}

export async function get(path) { return answer(await fetch(path, { headers: headers() })); }

export async function post(path, body = {}) {
  return answer(await fetch(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }),
                                    body: JSON.stringify(body) }));
}

export async function upload(file) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  return answer(await fetch("/v1/files", { method: "POST", headers: headers(), body: form }));
}

export async function text(path) {
  const res = await fetch(path, { headers: headers() });
  if (res.status === 401) throw new AuthError("the API key is missing or wrong");
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return res.text();
}

// Streams a chat completion; onText(piece) gets each piece of the answer as it is generated.
export async function chat(model, messages, onText, maxTokens = 128) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ model, messages, stream: true, max_tokens: maxTokens, temperature: 0 }),
  });
  if (!res.ok) return answer(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (piece) onText(piece);
    }
  }
}
