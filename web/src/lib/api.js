// The calls the UI makes to the api, through the web server's /api proxy. Plain JS: no Vue here.

import { readEventStream } from './sse.js';

export const API_BASE = '/api';
/** How long a stream may go without any data before the page gives up on it (seconds). */
export const DEFAULT_STALL_SECONDS = 120;

/**
 * An error the UI can explain: `kind` picks the summary, `message` says it in plain words, `detail`
 * is the server's own message (shown beside it), `retryAfter` is in seconds.
 */
export class ApiError extends Error {
  constructor(kind, message, { status = 0, retryAfter = 0, detail = '', code = '' } = {}) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.retryAfter = retryAfter;
    this.detail = detail;
    this.code = code;
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

async function errorBody(response) {
  try {
    const body = await response.json();
    const detail = body?.error?.message ?? body?.detail;
    const code = typeof body?.error?.code === 'string' ? body.error.code : '';
    if (typeof detail === 'string') return { detail, code };
    if (Array.isArray(detail)) return { detail: detail.map((d) => d.msg).join('; '), code };
  } catch {
    // Not JSON: fall through to the status text.
  }
  return { detail: '', code: '' };
}

/** Turn a non-2xx response into an ApiError: a plain summary plus the server's own words. */
export async function errorFromResponse(response) {
  const status = response.status;
  const retryAfter = parseRetryAfter(response.headers.get('Retry-After'));
  const { detail, code } = await errorBody(response);
  const opts = { status, retryAfter, detail, code };
  if (status === 503) return new ApiError('overloaded', 'The server is busy with other requests.', opts);
  if (status === 429) return new ApiError('rate_limited', 'Too many requests were sent in a short time.', opts);
  if (status === 502 || status === 504) {
    return new ApiError('unavailable', 'The chat service is not reachable right now.', opts);
  }
  if (status === 401 || status === 403) return new ApiError('unauthorized', 'The api refused the request.', opts);
  if (status >= 400 && status < 500) {
    return new ApiError('rejected', detail || response.statusText || `HTTP ${status}`, { ...opts, detail: '' });
  }
  return new ApiError('server', 'The server failed to answer.', {
    ...opts,
    detail: detail || response.statusText || `HTTP ${status}`,
  });
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

/** The served model: { id, contextLength, capabilities, defaults } (defaults: the server's own
 *  starting temperature and max tokens, PIBLOOM_CHAT_*, where it reports them). */
export async function fetchModel({ signal } = {}) {
  const response = await request('/v1/models', { signal, headers: { Accept: 'application/json' } });
  const body = await response.json();
  const card = body?.data?.[0];
  if (!card?.id) throw new ApiError('server', 'The api serves no model.');
  const capabilities = Array.isArray(card.capabilities) ? card.capabilities.filter((c) => typeof c === 'string') : [];
  const defaults = {};
  if (Number.isFinite(card.defaults?.temperature)) defaults.temperature = card.defaults.temperature;
  if (Number.isInteger(card.defaults?.max_tokens)) defaults.maxTokens = card.defaults.max_tokens;
  return { id: card.id, contextLength: Number(card.max_model_len) || 0, capabilities, defaults };
}

/** How many prompt tokens `messages` make after the chat template: { count, contextLength }. */
export async function countTokens(messages, { signal } = {}) {
  const response = await request('/tokenize', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ messages }),
    signal,
  });
  const body = await response.json();
  return { count: Number(body.count) || 0, contextLength: Number(body.max_model_len) || 0 };
}

/** The request body for /v1/chat/completions from the UI's names; leaves out what is unset. */
export function chatBody({ model, messages, temperature, maxTokens, topP, topK, repetitionPenalty, stop, seed, json }) {
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  if (temperature != null) body.temperature = temperature;
  if (maxTokens != null) body.max_tokens = maxTokens;
  if (topP != null) body.top_p = topP;
  if (topK != null) body.top_k = topK;
  if (repetitionPenalty != null) body.repetition_penalty = repetitionPenalty;
  if (stop?.length) body.stop = stop;
  if (seed != null) body.seed = seed;
  if (json) body.response_format = { type: 'json_object' };
  return body;
}

/**
 * Stream one chat completion. Calls `onDelta(text)` for every piece of the reply and resolves with
 * { finishReason, usage } once the server sends [DONE]. Rejects with an AbortError when `signal`
 * fires (closing the connection, which cancels generation on the server), with ApiError 'stalled'
 * when no event arrives for `stallSeconds`, and with ApiError otherwise.
 */
export async function streamChatCompletion(params, { signal, onDelta, stallSeconds = DEFAULT_STALL_SECONDS }) {
  // One controller for the connection: the caller's Stop and the stall watchdog both close it.
  const connection = new AbortController();
  const forward = () => connection.abort(signal.reason);
  if (signal?.aborted) forward();
  signal?.addEventListener('abort', forward, { once: true });
  let stalled = false;
  let watchdog = null;
  const arm = () => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => {
      stalled = true;
      connection.abort();
    }, stallSeconds * 1000);
  };
  const stallError = () =>
    new ApiError('stalled', `No answer: the server sent nothing for ${stallSeconds} seconds.`);

  try {
    arm();
    let response;
    try {
      response = await request('/v1/chat/completions', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
        body: JSON.stringify(chatBody(params)),
        signal: connection.signal,
      });
    } catch (err) {
      if (stalled) throw stallError();
      throw err;
    }

    let finishReason = null;
    let usage = null;
    try {
      for await (const event of readEventStream(response.body, connection.signal)) {
        arm();
        if (event.data === '[DONE]') return { finishReason, usage };
        let chunk;
        try {
          chunk = JSON.parse(event.data);
        } catch {
          throw new ApiError('server', 'The server sent a malformed reply.');
        }
        if (chunk.error) {
          throw new ApiError('server', 'Generation failed part-way.', { detail: chunk.error.message || '' });
        }
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        if (choice.delta?.content) onDelta(choice.delta.content);
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
    } catch (err) {
      if (stalled) throw stallError();
      if (err instanceof ApiError || err?.name === 'AbortError' || signal?.aborted) throw err;
      throw new ApiError('network', 'The connection was lost while the reply was streaming.');
    }
    if (stalled) throw stallError();
    if (signal?.aborted) throw new DOMException('The reply was stopped.', 'AbortError');
    throw new ApiError('network', 'The connection closed before the reply was complete.');
  } finally {
    clearTimeout(watchdog);
    signal?.removeEventListener('abort', forward);
  }
}
