import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, fetchModel, parseRetryAfter, streamChatCompletion } from '../src/lib/api.js';
import { byteStream, chatSse, jsonResponse, sseResponse } from './helpers.js';

afterEach(() => vi.unstubAllGlobals());

const request = { model: 'm', messages: [{ role: 'user', content: 'hi' }], temperature: 0.3, maxTokens: 42 };

async function failure(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('streamChatCompletion', () => {
  it('posts the history and settings and streams the deltas', async () => {
    const fetch = vi.fn(async () => sseResponse(chatSse(['Hel', 'lo', ' wörld 🌸'], { finishReason: 'length' }), 5));
    vi.stubGlobal('fetch', fetch);
    const deltas = [];
    const result = await streamChatCompletion(request, { onDelta: (t) => deltas.push(t) });

    expect(deltas).toEqual(['Hel', 'lo', ' wörld 🌸']);
    expect(result.finishReason).toBe('length');
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe('/api/v1/chat/completions');
    expect(init.method).toBe('POST');
    expect(JSON.parse(init.body)).toEqual({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
      stream_options: { include_usage: true },
      temperature: 0.3,
      max_tokens: 42,
    });
  });

  it('maps 503 to "overloaded" with the Retry-After seconds', async () => {
    vi.stubGlobal('fetch', async () =>
      jsonResponse({ error: { message: 'queue full', type: 'overloaded' } }, 503, { 'Retry-After': '7' }),
    );
    const err = await failure(streamChatCompletion(request, { onDelta() {} }));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.kind).toBe('overloaded');
    expect(err.status).toBe(503);
    expect(err.retryAfter).toBe(7);
  });

  it.each([
    [429, 'rate_limited'],
    [502, 'unavailable'],
    [504, 'unavailable'],
    [401, 'unauthorized'],
    [500, 'server'],
  ])('maps HTTP %i to %s', async (status, kind) => {
    vi.stubGlobal('fetch', async () => jsonResponse({ error: { message: 'nope' } }, status));
    expect((await failure(streamChatCompletion(request, { onDelta() {} }))).kind).toBe(kind);
  });

  it("passes the api's message through for a refused request", async () => {
    const message = "This model's maximum context length is 8192 tokens";
    vi.stubGlobal('fetch', async () => jsonResponse({ error: { message, type: 'invalid_request_error' } }, 400));
    const err = await failure(streamChatCompletion(request, { onDelta() {} }));
    expect(err.kind).toBe('rejected');
    expect(err.message).toBe(message);
  });

  it('reports a network failure when fetch itself fails', async () => {
    vi.stubGlobal('fetch', async () => {
      throw new TypeError('Failed to fetch');
    });
    const err = await failure(streamChatCompletion(request, { onDelta() {} }));
    expect(err.kind).toBe('network');
  });

  it('fails with a network error when the stream ends before [DONE]', async () => {
    vi.stubGlobal('fetch', async () => sseResponse(chatSse(['partial'], { done: false })));
    const deltas = [];
    const err = await failure(streamChatCompletion(request, { onDelta: (t) => deltas.push(t) }));
    expect(deltas).toEqual(['partial']);
    expect(err.kind).toBe('network');
  });

  it('fails with the error the server sends in the middle of a stream', async () => {
    const body = `${chatSse(['a'], { done: false }).split('\n\n')[0]}\n\ndata: {"error":{"message":"engine died"}}\n\n`;
    vi.stubGlobal('fetch', async () => sseResponse(body));
    const err = await failure(streamChatCompletion(request, { onDelta() {} }));
    expect(err.kind).toBe('server');
    expect(err.message).toBe('Generation failed part-way.');
    expect(err.detail).toBe('engine died');
  });

  it('rejects with AbortError when the signal fires mid-stream', async () => {
    const controller = new AbortController();
    const first = `${chatSse(['first'], { done: false }).split('\n\n')[0]}\n\n`;
    vi.stubGlobal('fetch', async (url, init) => {
      // Like fetch: the body never ends on its own (a long generation) and errors when aborted.
      const body = new ReadableStream({
        start(c) {
          c.enqueue(new TextEncoder().encode(first));
          init.signal.addEventListener('abort', () => c.error(init.signal.reason));
        },
      });
      return new Response(body, { headers: { 'Content-Type': 'text/event-stream' } });
    });
    const deltas = [];
    const err = await failure(
      streamChatCompletion(request, {
        signal: controller.signal,
        onDelta(t) {
          deltas.push(t);
          controller.abort();
        },
      }),
    );
    expect(deltas).toEqual(['first']);
    expect(err.name).toBe('AbortError');
  });
});

describe('fetchModel', () => {
  it('reads the model id and its context size', async () => {
    vi.stubGlobal('fetch', async (url) => {
      expect(url).toBe('/api/v1/models');
      return jsonResponse({ object: 'list', data: [{ id: 'SmolLM2', object: 'model', max_model_len: 8192 }] });
    });
    expect(await fetchModel()).toEqual({ id: 'SmolLM2', contextLength: 8192, capabilities: [], defaults: {} });
  });

  it("reads the server's chat defaults, ignoring what is not a number", async () => {
    vi.stubGlobal('fetch', async () =>
      jsonResponse({
        data: [{ id: 'm', max_model_len: 2048, defaults: { temperature: 0.3, max_tokens: 'lots', top_p: 0.9 } }],
      }),
    );
    expect((await fetchModel()).defaults).toEqual({ temperature: 0.3 });
  });

  it('fails clearly when the proxy cannot reach the api', async () => {
    vi.stubGlobal('fetch', async () => jsonResponse({ error: { message: 'down' } }, 502));
    expect((await failure(fetchModel())).kind).toBe('unavailable');
  });
});

describe('parseRetryAfter', () => {
  it('reads seconds and HTTP dates', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfter('12', now)).toBe(12);
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now)).toBe(30);
    expect(parseRetryAfter('Wed, 31 Dec 2025 00:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter(null, now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBe(0);
  });
});
