// Playground: chat with any served model; the same prompt to two models side by side.
import { chat, get } from "/dashboard/api.js";
import { failed, h } from "/dashboard/ui.js";

export async function playView(view, _arg, params) {
  const [models, info] = await Promise.all([get("/v1/models"), get("/v1/dashboard/info")]);
  const ids = models.data.map((m) => m.id);
  const tuned = params.get("model") || info.tuned_models[info.tuned_models.length - 1] || null;
  const base = info.base_models[0] || ids[0];
  const panes = [pane("a", ids, base), pane("b", ids, tuned && tuned !== base ? tuned : "")];
  const prompt = h("textarea#prompt", { rows: 3, placeholder: "Ask something…", required: true });
  const send = h("button#send", { type: "submit" }, "Send");
  const form = h("form.card#play-form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      send.disabled = true;
      prompt.value = "";
      try { await Promise.all(panes.filter((p) => p.model()).map((p) => p.ask(text))); }
      catch (err) { failed(err); }
      finally { send.disabled = false; prompt.focus(); }
    },
  }, h("h2", {}, "Playground"), h("p.muted", {}, "The same prompt goes to each chosen model (greedy decoding); ",
    "pick none on the right to chat with one model."), prompt, h("div.actions", {}, send,
    h("button.link", { type: "button", onclick: () => panes.forEach((p) => p.clear()) }, "Clear")));
  view.append(form, h("div.panes", {}, panes.map((p) => p.node)));
}

function pane(id, ids, selected) {
  const select = h(`select#model-${id}`, {}, id === "b" ? h("option", { value: "" }, "(none)") : null,
    ids.map((m) => h("option", { value: m, selected: m === selected }, m)));
  const log = h(`div.chatlog#chat-${id}`);
  let messages = [];
  select.addEventListener("change", () => { messages = []; log.replaceChildren(); });
  return {
    node: h("section.card.pane", {}, h("label.field", {}, h("span", {}, id === "a" ? "Model" : "Compare with"), select), log),
    model: () => select.value,
    clear: () => { messages = []; log.replaceChildren(); },
    async ask(text) {
      messages.push({ role: "user", content: text });
      log.append(h("div.msg.user", {}, text));
      const answer = h("div.msg.assistant", { "data-model": select.value });
      log.append(answer);
      let reply = "";
      try {
        await chat(select.value, messages, (piece) => { reply += piece; answer.textContent = reply; });
        answer.classList.add("done");
      } catch (err) {
        answer.classList.add("error");
        answer.textContent = err.message;
        throw err;
      } finally {
        messages.push({ role: "assistant", content: reply });
      }
    },
  };
}
