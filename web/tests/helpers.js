// Shared test helpers: byte streams and SSE responses built in memory.

const encoder = new TextEncoder();

/** A ReadableStream that yields `chunks` (strings or byte arrays) one by one. */
export function byteStream(chunks) {
  const queue = chunks.map((c) => (typeof c === 'string' ? encoder.encode(c) : c));
  return new ReadableStream({
    pull(controller) {
      if (queue.length) controller.enqueue(queue.shift());
      else controller.close();
    },
  });
}

/** The SSE body the api sends for a chat completion streaming `pieces`. */
export function chatSse(pieces, { finishReason = 'stop', done = true } = {}) {
  const events = pieces.map(
    (text) => `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: text }, finish_reason: null }] })}\n\n`,
  );
  events.push(`data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: {}, finish_reason: finishReason }] })}\n\n`);
  if (done) events.push('data: [DONE]\n\n');
  return events.join('');
}

/** A streaming SSE Response whose body arrives in `chunkSize`-byte pieces (splitting characters). */
export function sseResponse(text, chunkSize = 7) {
  const bytes = encoder.encode(text);
  const chunks = [];
  for (let i = 0; i < bytes.length; i += chunkSize) chunks.push(bytes.slice(i, i + chunkSize));
  return new Response(byteStream(chunks), { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

export function jsonResponse(body, status = 200, headers = {}) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

/** An in-memory Storage (the part of the Web Storage API the app uses). */
export function memoryStorage(initial = {}) {
  const data = new Map(Object.entries(initial));
  return {
    getItem: (k) => (data.has(k) ? data.get(k) : null),
    setItem: (k, v) => data.set(k, String(v)),
    removeItem: (k) => data.delete(k),
    data,
  };
}

/** Tokens of chat messages as the fake api counts them: 4 per message plus 1 per word. */
export function fakeCount(messages) {
  return messages.reduce((n, m) => n + 4 + m.content.split(/\s+/).filter(Boolean).length, 0);
}
