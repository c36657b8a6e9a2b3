// useChat against failures, a full context, regeneration, editing and several chats at once.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { reactive, ref } from 'vue';
import { useChat } from '../src/composables/useChat.js';
import { useConversations } from '../src/composables/useConversations.js';
import { DEFAULTS } from '../src/composables/useSettings.js';
import { ApiError, streamChatCompletion } from '../src/lib/api.js';
import { selectVersion } from '../src/lib/history.js';
import { fakeCount, memoryStorage } from './helpers.js';

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

function setup({ systemPrompt = '', contextLength = 2048, maxTokens = 64, stream, frame } = {}) {
  const store = useConversations({ storage: memoryStorage() });
  const settings = reactive({ ...DEFAULTS, systemPrompt, maxTokens });
  const modelInfo = { model: ref({ id: 'tiny', contextLength, capabilities: [] }), error: ref(null), refresh: vi.fn() };
  const calls = [];
  const manual = (request, { signal, onDelta }) =>
    new Promise((resolve, reject) => {
      signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
      calls.push({ request, signal, onDelta, resolve, reject });
    });
  const count = async (messages) => ({ count: fakeCount(messages), contextLength });
  let t = 0;
  const chat = useChat({ store, settings, modelInfo, stream: stream ?? manual, count, clock: () => (t += 100), frame });
  return { store, chat, calls, settings };
}

const roles = (request) => request.messages.map((m) => m.role);
const alternates = (request) =>
  roles(request)
    .filter((r) => r !== 'system')
    .every((r, i) => r === (i % 2 === 0 ? 'user' : 'assistant'));

/** Send `text` and answer it with `reply` (then finish). */
async function turn(chat, calls, text, reply, usage = null) {
  const pending = chat.send(text);
  await vi.waitFor(() => expect(calls.at(-1)?.done).toBe(undefined));
  await vi.waitFor(() => expect(calls.length).toBeGreaterThan(0));
  const call = calls.at(-1);
  call.done = true;
  call.onDelta(reply);
  call.resolve({ finishReason: 'stop', usage });
  await pending;
  return call;
}

async function nextCall(calls, n) {
  await vi.waitFor(() => expect(calls).toHaveLength(n));
  return calls[n - 1];
}

describe('a failed turn is never sent again', () => {
  it.each([
    ['400 refused', () => new ApiError('rejected', 'messages must contain some text', { status: 400 })],
    ['503 busy', () => new ApiError('overloaded', 'The server is busy with other requests.', { status: 503, retryAfter: 2 })],
  ])('%s: the next message goes without it and roles alternate', async (_, error) => {
    const { store, chat, calls } = setup();
    await turn(chat, calls, 'first', 'one');
    const pending = chat.send('refused one');
    (await nextCall(calls, 2)).reject(error());
    await pending;
    expect(chat.error.value).not.toBeNull();
    const failed = store.active.value.messages.at(-1);
    expect(failed).toMatchObject({ role: 'user', content: 'refused one', status: 'failed' });

    const next = chat.send('second');
    const call = await nextCall(calls, 3);
    expect(call.request.messages.map((m) => m.content)).toEqual(['first', 'one', 'second']);
    expect(alternates(call.request)).toBe(true);
    call.onDelta('two');
    call.resolve({ finishReason: 'stop' });
    await next;
    // The refused message stays on screen, marked.
    expect(store.active.value.messages.map((m) => [m.role, m.status])).toEqual([
      ['user', 'done'],
      ['assistant', 'done'],
      ['user', 'failed'],
      ['user', 'done'],
      ['assistant', 'done'],
    ]);
  });

  it('stop before the first token: the turn is marked and left out afterwards', async () => {
    const { store, chat, calls } = setup();
    const pending = chat.send('never mind');
    await nextCall(calls, 1);
    chat.stop();
    await pending;
    expect(chat.error.value).toBeNull();
    expect(store.active.value.messages).toHaveLength(1);
    expect(store.active.value.messages[0]).toMatchObject({ status: 'failed', note: 'Stopped before a reply' });

    const next = chat.send('real question');
    const call = await nextCall(calls, 2);
    expect(call.request.messages).toEqual([{ role: 'user', content: 'real question' }]);
    call.resolve({ finishReason: 'stop' });
    await next;
  });

  it('mid-stream error: the partial reply and its question are left out of the next request', async () => {
    const { store, chat, calls } = setup();
    await turn(chat, calls, 'q1', 'a1');
    const pending = chat.send('q2');
    const broken = await nextCall(calls, 2);
    broken.onDelta('half an ans');
    broken.reject(new ApiError('server', 'Generation failed part-way.', { detail: 'engine died' }));
    await pending;
    expect(chat.error.value).toMatchObject({ kind: 'server', detail: 'engine died' });
    expect(store.active.value.messages.at(-1)).toMatchObject({ content: 'half an ans', status: 'error' });

    const next = chat.send('q3');
    const call = await nextCall(calls, 3);
    expect(call.request.messages.map((m) => m.content)).toEqual(['q1', 'a1', 'q3']);
    expect(alternates(call.request)).toBe(true);
    call.resolve({ finishReason: 'stop' });
    await next;
  });
});

describe('context management', () => {
  it('leaves out the oldest turns, never the system prompt or the new message, and marks where', async () => {
    // Each turn below costs 4 + 4 + words; 130 tokens of context minus 64 for the reply leaves 66; all three make 76.
    const { store, chat, calls } = setup({ systemPrompt: 'Be brief.', contextLength: 130, maxTokens: 64 });
    const words = (n, w) => Array(n).fill(w).join(' ');
    await turn(chat, calls, words(10, 'old'), words(10, 'OLD'));
    await turn(chat, calls, words(10, 'mid'), words(10, 'MID'));
    const pending = chat.send(words(10, 'new'));
    const call = await nextCall(calls, 3);
    const sent = call.request.messages;
    expect(sent[0]).toEqual({ role: 'system', content: 'Be brief.' });
    expect(sent.at(-1).content).toBe(words(10, 'new'));
    expect(sent.some((m) => m.content.startsWith('old'))).toBe(false);
    expect(fakeCount(sent)).toBeLessThanOrEqual(130 - 64);
    expect(alternates(call.request)).toBe(true);
    // The page shows where the context starts and how full it is.
    const kept = store.active.value.messages.find((m) => m.content.startsWith('mid'));
    expect(store.active.value.contextStart).toBe(kept.id);
    expect(chat.context.value).toMatchObject({ contextLength: 130, dropped: 1, tokens: fakeCount(sent) });
    call.resolve({ finishReason: 'stop', usage: { prompt_tokens: 60, completion_tokens: 10, total_tokens: 70 } });
    await pending;
    // After the reply, the meter follows the reply's usage.
    expect(chat.context.value.tokens).toBe(70);
  });

  it('does not send a message that cannot fit even alone, and says why', async () => {
    const { store, chat, calls } = setup({ contextLength: 100, maxTokens: 64 });
    await chat.send(Array(60).fill('word').join(' '));
    expect(calls).toHaveLength(0);
    expect(chat.error.value.kind).toBe('too_long');
    expect(chat.error.value.message).toMatch(/does not fit in the model's context: it needs 64 tokens, and 36 are left/);
    expect(store.active.value.messages[0]).toMatchObject({ status: 'failed' });
    expect(chat.busy.value).toBe(false);
  });
});

describe('regenerate and edit', () => {
  it('keeps each alternative and switches between them', async () => {
    const { store, chat, calls } = setup();
    await turn(chat, calls, 'tell a joke', 'joke one');
    const reply = store.active.value.messages[1];
    const again = chat.regenerate(reply.id);
    const call = await nextCall(calls, 2);
    expect(call.request.messages).toEqual([{ role: 'user', content: 'tell a joke' }]);
    call.onDelta('joke two');
    call.resolve({ finishReason: 'stop' });
    await again;
    expect(store.active.value.messages).toHaveLength(2);
    expect(reply).toMatchObject({ content: 'joke two', version: 1 });
    expect(reply.versions.map((v) => v.content)).toEqual(['joke one', 'joke two']);
    selectVersion(reply, 0);
    expect(reply.content).toBe('joke one');

    // The chosen alternative is what the next request carries.
    const next = chat.send('another');
    const third = await nextCall(calls, 3);
    expect(third.request.messages.map((m) => m.content)).toEqual(['tell a joke', 'joke one', 'another']);
    third.resolve({ finishReason: 'stop' });
    await next;
  });

  it('a regeneration stopped before any text goes back to the reply it had', async () => {
    const { store, chat, calls } = setup();
    await turn(chat, calls, 'q', 'kept');
    const reply = store.active.value.messages[1];
    const again = chat.regenerate(reply.id);
    await nextCall(calls, 2);
    chat.stop();
    await again;
    expect(reply).toMatchObject({ content: 'kept', status: 'done' });
    expect(reply.versions).toBeUndefined();
  });

  it('edits a user message and answers it again, dropping what came after', async () => {
    const { store, chat, calls } = setup();
    await turn(chat, calls, 'first', 'A');
    await turn(chat, calls, 'secnd', 'B');
    const target = store.active.value.messages[2];
    const edited = chat.edit(target.id, 'second');
    const call = await nextCall(calls, 3);
    expect(call.request.messages.map((m) => m.content)).toEqual(['first', 'A', 'second']);
    call.onDelta('B2');
    call.resolve({ finishReason: 'stop' });
    await edited;
    expect(store.active.value.messages.map((m) => m.content)).toEqual(['first', 'A', 'second', 'B2']);
  });
});

describe('several chats', () => {
  it('keeps the busy state per chat: Stop in another chat does not stop this one', async () => {
    const { store, chat, calls } = setup();
    const a = chat.send('in chat A');
    const callA = await nextCall(calls, 1);
    const idA = store.activeId.value;
    expect(chat.busy.value).toBe(true);

    store.startNew();
    expect(chat.busy.value).toBe(false);
    const b = chat.send('in chat B');
    const callB = await nextCall(calls, 2);
    expect(chat.busy.value).toBe(true);
    chat.stop(); // the open chat is B
    await b;
    expect(callB.signal.aborted).toBe(true);
    expect(callA.signal.aborted).toBe(false);
    expect(chat.isBusy(idA)).toBe(true);

    callA.onDelta('still here');
    callA.resolve({ finishReason: 'stop' });
    await a;
    expect(store.find(idA).messages.at(-1)).toMatchObject({ content: 'still here', status: 'done' });
  });
});

describe('streaming text', () => {
  it('joins the reply once per frame however many chunks arrive', async () => {
    const frames = [];
    const frame = (fn) => Object.assign(() => frames.push(fn), { cancel: () => frames.splice(0) });
    const { store, chat, calls } = setup({ frame });
    const pending = chat.send('many chunks');
    const call = await nextCall(calls, 1);
    const reply = store.active.value.messages[1];
    for (let i = 0; i < 100; i += 1) call.onDelta(`${i} `);
    expect(reply.content).toBe('');
    frames.shift()();
    expect(reply.content.split(' ')).toHaveLength(101);
    call.onDelta('last');
    // The end of the stream adds what is still waiting for a frame.
    call.resolve({ finishReason: 'stop' });
    await pending;
    expect(reply.content.endsWith('99 last')).toBe(true);
  });
});

describe('usage and speed', () => {
  it('keeps the usage and the timing of a reply for tokens/s', async () => {
    const { store, chat, calls } = setup();
    await turn(chat, calls, 'count', 'one two', { prompt_tokens: 9, completion_tokens: 11, total_tokens: 20 });
    const reply = store.active.value.messages[1];
    expect(reply.usage).toEqual({ prompt_tokens: 9, completion_tokens: 11, total_tokens: 20 });
    expect(reply.timing.end).toBeGreaterThan(reply.timing.firstToken);
  });
});

describe('a stalled stream', () => {
  it('ends with a "no answer" note and Retry after the configured time', async () => {
    vi.useFakeTimers();
    // The server accepts the request and then sends nothing, ever.
    vi.stubGlobal('fetch', async (url, init) => {
      const body = new ReadableStream({
        start(c) {
          c.enqueue(new TextEncoder().encode(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: 'Hel' } }] })}\n\n`));
          init.signal.addEventListener('abort', () => c.error(new DOMException('aborted', 'AbortError')));
        },
      });
      return new Response(body, { headers: { 'Content-Type': 'text/event-stream' } });
    });
    const { store, chat, settings } = setup({ stream: streamChatCompletion });
    settings.stallSeconds = 5;
    const pending = chat.send('hello?');
    await vi.advanceTimersByTimeAsync(4900);
    expect(chat.busy.value).toBe(true);
    await vi.advanceTimersByTimeAsync(200);
    await pending;
    expect(chat.busy.value).toBe(false);
    expect(chat.error.value).toMatchObject({ kind: 'stalled', message: 'No answer: the server sent nothing for 5 seconds.' });
    expect(store.active.value.messages.at(-1)).toMatchObject({
      content: 'Hel',
      status: 'error',
      note: 'No answer from the server: this reply is incomplete',
    });
  });
});
