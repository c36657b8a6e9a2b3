// What a conversation sends to the api, and the rules that keep it well-formed. Plain JS: no Vue.
//
// A request is: the optional system prompt, then user/assistant pairs that both succeeded, then the
// user message being answered. A user turn whose reply failed, was stopped before any text, or never
// came is left out (its messages stay on screen, marked), so roles always alternate as chat
// templates expect and a refused message is never sent again.

/** A reply that can be sent back as context: it has text and was not broken by an error. */
export function usableReply(m) {
  return m?.role === 'assistant' && (m.status === 'done' || m.status === 'stopped') && !!m.content.trim();
}

/**
 * The turns of `messages` up to and including the user message at `upTo` (default: the last user
 * message), as [{ user, reply }] pairs; the last pair is the one to answer (reply null).
 */
export function sendableTurns(messages, upTo = lastUserIndex(messages)) {
  const turns = [];
  for (let i = 0; i < upTo; i += 1) {
    const m = messages[i];
    if (m.role !== 'user' || !m.content.trim()) continue;
    const next = messages[i + 1];
    if (usableReply(next)) turns.push({ user: m, reply: next });
  }
  const last = messages[upTo];
  if (last?.role === 'user') turns.push({ user: last, reply: null });
  return turns;
}

export function lastUserIndex(messages) {
  for (let i = messages.length - 1; i >= 0; i -= 1) if (messages[i].role === 'user') return i;
  return -1;
}

/** The api's messages for `turns`, with the system prompt first. */
export function toApiMessages(turns, systemPrompt) {
  const out = [];
  if (systemPrompt?.trim()) out.push({ role: 'system', content: systemPrompt.trim() });
  for (const { user, reply } of turns) {
    out.push({ role: 'user', content: user.content });
    if (reply) out.push({ role: 'assistant', content: reply.content });
  }
  return out;
}

/**
 * Fit the conversation in the model's context: leave out the oldest turns (never the system prompt
 * or the message being answered) until `count(messages)` plus the reply budget fits.
 * Returns { messages, dropped (turns left out), tokens, limit } or { tooLong: true, tokens, limit }.
 */
export async function fitToContext(turns, systemPrompt, { count, contextLength, replyBudget }) {
  const limit = Math.max(0, contextLength - replyBudget);
  let start = 0;
  for (;;) {
    const messages = toApiMessages(turns.slice(start), systemPrompt);
    const tokens = await count(messages);
    if (tokens <= limit) return { messages, dropped: start, tokens, limit };
    if (start >= turns.length - 1) return { tooLong: true, tokens, limit };
    // Drop at least one turn; when far over, drop as many as the overflow suggests at once.
    const over = tokens - limit;
    const perTurn = tokens / (turns.length - start);
    start = Math.min(turns.length - 1, start + Math.max(1, Math.floor(over / perTurn)));
  }
}

// --- alternative replies ----------------------------------------------------------------------

const VERSION_FIELDS = ['content', 'status', 'usage', 'timing', 'truncated', 'note'];

function snapshot(m) {
  return Object.fromEntries(VERSION_FIELDS.map((k) => [k, m[k] ?? null]));
}

/** Keep the current text of reply `m` as an alternative and make room for a new one. */
export function startNewVersion(m) {
  if (!m.versions?.length) m.versions = [snapshot(m)];
  else m.versions[m.version ?? 0] = snapshot(m);
  m.versions.push(null);
  m.version = m.versions.length - 1;
  Object.assign(m, { content: '', status: 'streaming', usage: null, timing: null, truncated: false, note: null });
}

/** Record the finished state of the current version (after streaming). */
export function saveVersion(m) {
  if (m.versions?.length) m.versions[m.version] = snapshot(m);
}

/** Show alternative `index` of reply `m`. */
export function selectVersion(m, index) {
  if (!m.versions?.length || index < 0 || index >= m.versions.length || index === m.version) return;
  m.versions[m.version] = snapshot(m);
  m.version = index;
  Object.assign(m, m.versions[index]);
}

/** Drop the current version (a regeneration that failed before any text), back to the previous one. */
export function dropVersion(m) {
  if (!m.versions?.length) return false;
  m.versions.splice(m.version, 1);
  const back = Math.max(0, m.version - 1);
  m.version = back;
  Object.assign(m, m.versions[back]);
  if (m.versions.length === 1) {
    delete m.versions;
    delete m.version;
  }
  return true;
}

/** Tokens per second of a finished reply, from its usage and timing; null when unknown. */
export function tokensPerSecond(m) {
  const tokens = m.usage?.completion_tokens;
  const ms = m.timing ? m.timing.end - m.timing.firstToken : 0;
  if (!tokens || !(ms > 0)) return null;
  return (tokens - 1) / (ms / 1000) || tokens / (ms / 1000);
}
