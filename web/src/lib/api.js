// The calls the UI makes to the api, through the web server's /api proxy.

import { readEventStream } from '../composables/useEventStream.js';

export const API_BASE = '/api';

/** An error the UI can explain: `kind` picks the message, `retryAfter` is in seconds. */
export class ApiError extends Error {
  constructor(kind, message, { status = 0, retryAfter = 0 } = {}) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent or bad. */
export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return 0;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? 0 : Math.max(0, Math.ceil((date - now) / 1000));
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    const detail = body?.error?.message ?? body?.detail;
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg).join('; ');
  } catch {
    // Not JSON: fall through to the status text.
  }
  return response.statusText || `HTTP ${response.status}`;
}

/** Turn a non-2xx response into an ApiError. */
export async function errorFromResponse(response) {
  const status = response.status;
  const retryAfter = parseRetryAfter(response.headers.get('Retry-After'));
  const detail = await errorMessage(response);
  const opts = { status, retryAfter };
  if (status === 503) {
    return new ApiError('overloaded', 'The server is busy with other requests.', opts);
  }
  if (status === 429) return new ApiError('rate_limited', 'Too many requests from this browser.', opts);
  if (status === 502 || status === 504) {
    return new ApiError('unavailable', 'The chat service is not reachable right now.', opts);
  }
  if (status === 401 || status === 403) {
    return new ApiError('unauthorized', `The api refused the request: ${detail}`, opts);
  }
  if (status >= 400 && status < 500) return new ApiError('rejected', detail, opts);
  return new ApiError('server', `The server failed: ${detail}`, opts);
}

async function request(path, init) {
  let response;
  try {
    response = await fetch(`${API_BASE}${path}`, init);
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
    throw new ApiError('network', 'Could not reach the server. Check your connection.');
  }
  if (!response.ok) throw await errorFromResponse(response);
  return response;
}

/** The served model: { id, contextLength }. */
export async function fetchModel({ signal } = {}) {
  const response = await request('/v1/models', { signal, headers: { Accept: 'application/json' } });
  const body = await response.json();
  const card = body?.data?.[0];
  if (!card?.id) throw new ApiError('server', 'The api serves no model.');
  return { id: card.id, contextLength: Number(card.max_model_len) || 0 };
}

/**
 * Stream one chat completion. Calls `onDelta(text)` for every piece of the reply and resolves with
 * { finishReason, usage } once the server sends [DONE]. Rejects with an AbortError when `signal`
 * fires (closing the connection, which cancels generation on the server) and with ApiError otherwise.
 */
export async function streamChatCompletion(
  { model, messages, temperature, maxTokens },
  { signal, onDelta },
) {
  const body = { model, messages, stream: true };
  if (temperature != null) body.temperature = temperature;
  if (maxTokens != null) body.max_tokens = maxTokens;
  const response = await request('/v1/chat/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
    body: JSON.stringify(body),
    signal,
  });

  let finishReason = null;
  let usage = null;
  try {
    for await (const event of readEventStream(response.body)) {
      if (event.data === '[DONE]') return { finishReason, usage };
      let chunk;
      try {
        chunk = JSON.parse(event.data);
      } catch {
        throw new ApiError('server', 'The server sent a malformed reply.');
      }
      if (chunk.error) throw new ApiError('server', chunk.error.message || 'Generation failed.');
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) onDelta(choice.delta.content);
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  } catch (err) {
    if (err instanceof ApiError || err?.name === 'AbortError' || signal?.aborted) throw err;
    throw new ApiError('network', 'The connection was lost while the reply was streaming.');
  }
  throw new ApiError('network', 'The connection closed before the reply was complete.');
}
