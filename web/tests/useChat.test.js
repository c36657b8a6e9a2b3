import { describe, expect, it, vi } from 'vitest';
import { reactive, ref } from 'vue';
import { buildMessages, useChat } from '../src/composables/useChat.js';
import { useConversations } from '../src/composables/useConversations.js';
import { ApiError } from '../src/lib/api.js';
import { DEFAULTS } from '../src/composables/useSettings.js';
import { fakeCount, memoryStorage } from './helpers.js';

function setup(stream, { systemPrompt = '', contextLength = 2048, maxTokens = 64, count } = {}) {
  const store = useConversations({ storage: memoryStorage() });
  const settings = reactive({ ...DEFAULTS, systemPrompt, temperature: 0.5, maxTokens });
  const modelInfo = { model: ref({ id: 'tiny', contextLength, capabilities: [] }), error: ref(null), refresh: vi.fn() };
  const counted = [];
  const counter =
    count ??
    (async (messages) => {
      counted.push(messages);
      return { count: fakeCount(messages), contextLength };
    });
  const chat = useChat({ store, settings, modelInfo, stream, count: counter });
  return { store, chat, modelInfo, settings, counted };
}

/** A stream function the test drives by hand: push tokens, then finish or fail. */
function manualStream() {
  const calls = [];
  const stream = (request, { signal, onDelta }) =>
    new Promise((resolve, reject) => {
      signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
      calls.push({ request, signal, onDelta, resolve, reject });
    });
  return { stream, calls };
}

describe('useChat', () => {
  it('sends the whole history with the system prompt and streams the reply in', async () => {
    const { stream, calls } = manualStream();
    const { store, chat } = setup(stream, { systemPrompt: 'Be brief.' });

    const first = chat.send('Hi there');
    expect(chat.status.value).toBe('waiting');
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    calls[0].onDelta('Hel');
    expect(chat.status.value).toBe('streaming');
    calls[0].onDelta('lo!');
    // The text joins the reply at the next animation frame, both pieces at once.
    await vi.waitFor(() =>
      expect(store.active.value.messages.at(-1)).toMatchObject({ role: 'assistant', content: 'Hello!', status: 'streaming' }),
    );
    calls[0].resolve({ finishReason: 'stop' });
    await first;
    expect(chat.status.value).toBe('idle');
    expect(store.active.value.messages.at(-1).status).toBe('done');

    const second = chat.send('And again?');
    await vi.waitFor(() => expect(calls).toHaveLength(2));
    expect(calls[1].request).toEqual({
      model: 'tiny',
      temperature: 0.5,
      maxTokens: 64,
      topP: null,
      topK: null,
      repetitionPenalty: null,
      stop: [],
      seed: null,
      json: false,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi there' },
        { role: 'assistant', content: 'Hello!' },
        { role: 'user', content: 'And again?' },
      ],
    });
    calls[1].resolve({ finishReason: 'length' });
    await second;
    expect(store.active.value.messages.at(-1).truncated).toBe(true);
  });

  it('ignores sends while a reply is in progress, and blank ones', async () => {
    const { stream, calls } = manualStream();
    const { store, chat } = setup(stream);
    const pending = chat.send('one');
    expect(await chat.send('two')).toBe(false);
    expect(await chat.send('   ')).toBe(false);
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    calls[0].resolve({ finishReason: 'stop' });
    await pending;
    expect(store.active.value.messages.filter((m) => m.role === 'user').map((m) => m.content)).toEqual(['one']);
  });

  it('stops a reply: aborts the request, keeps the text so far and returns to idle', async () => {
    const { stream, calls } = manualStream();
    const { store, chat } = setup(stream);
    const pending = chat.send('Tell me a long story');
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    calls[0].onDelta('Once upon a time');
    chat.stop();
    await pending;
    expect(calls[0].signal.aborted).toBe(true);
    expect(chat.status.value).toBe('idle');
    expect(chat.error.value).toBeNull();
    expect(store.active.value.messages.at(-1)).toMatchObject({ content: 'Once upon a time', status: 'stopped' });
  });

  it('drops an empty reply when stopped before the first token', async () => {
    const { stream, calls } = manualStream();
    const { store, chat } = setup(stream);
    const pending = chat.send('Hello');
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    chat.stop();
    await pending;
    expect(store.active.value.messages.map((m) => m.role)).toEqual(['user']);
  });

  it('explains an overloaded server and retries the same turn', async () => {
    const { stream, calls } = manualStream();
    const { store, chat } = setup(stream);
    const pending = chat.send('Busy?');
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    calls[0].reject(new ApiError('overloaded', 'The server is busy with other requests.', { status: 503, retryAfter: 3 }));
    await pending;
    expect(chat.error.value).toEqual({
      kind: 'overloaded',
      message: 'The server is busy with other requests.',
      detail: '',
      retryAfter: 3,
    });
    expect(chat.status.value).toBe('idle');
    expect(store.active.value.messages.map((m) => m.role)).toEqual(['user']);

    const retried = chat.retry();
    expect(chat.error.value).toBeNull();
    await vi.waitFor(() => expect(calls).toHaveLength(2));
    expect(calls[1].request.messages).toEqual([{ role: 'user', content: 'Busy?' }]);
    calls[1].onDelta('Not now.');
    calls[1].resolve({ finishReason: 'stop' });
    await retried;
    expect(store.active.value.messages.map((m) => [m.role, m.content])).toEqual([
      ['user', 'Busy?'],
      ['assistant', 'Not now.'],
    ]);
  });

  it('replaces a reply that broke half-way when retrying', async () => {
    const { stream, calls } = manualStream();
    const { store, chat } = setup(stream);
    const pending = chat.send('Go');
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    calls[0].onDelta('Part');
    calls[0].reject(new ApiError('network', 'The connection was lost while the reply was streaming.'));
    await pending;
    expect(chat.error.value.kind).toBe('network');
    expect(store.active.value.messages.at(-1)).toMatchObject({ content: 'Part', status: 'error' });

    const retried = chat.retry();
    await vi.waitFor(() => expect(calls).toHaveLength(2));
    // The broken reply is not part of the history sent again.
    expect(calls[1].request.messages).toEqual([{ role: 'user', content: 'Go' }]);
    calls[1].onDelta('Whole');
    calls[1].resolve({ finishReason: 'stop' });
    await retried;
    expect(store.active.value.messages.map((m) => m.content)).toEqual(['Go', 'Whole']);
  });

  it('reports the api as unreachable when the model cannot be looked up', async () => {
    const { stream, calls } = manualStream();
    const { chat, modelInfo, store } = setup(stream);
    modelInfo.model.value = null;
    modelInfo.refresh.mockImplementation(async () => {
      modelInfo.error.value = new ApiError('unavailable', 'The chat service is not reachable right now.', { status: 502 });
      return null;
    });
    await chat.send('Anyone?');
    expect(calls).toHaveLength(0);
    expect(chat.error.value.kind).toBe('unavailable');
    expect(store.active.value.messages.map((m) => m.role)).toEqual(['user']);
  });
});

describe('buildMessages', () => {
  it('leaves out turns without a usable reply, so roles alternate', () => {
    const conversation = {
      messages: [
        { role: 'user', content: 'a', status: 'done' },
        { role: 'assistant', content: 'A', status: 'done' },
        { role: 'user', content: 'refused', status: 'failed' },
        { role: 'user', content: 'b', status: 'done' },
        { role: 'assistant', content: 'half', status: 'error' },
        { role: 'user', content: 'c', status: 'done' },
        { role: 'assistant', content: '  ', status: 'stopped' },
        { role: 'user', content: 'd', status: 'done' },
        { role: 'assistant', content: 'D so far', status: 'stopped' },
        { role: 'user', content: 'now', status: 'done' },
      ],
    };
    expect(buildMessages(conversation, '  Be kind. ')).toEqual([
      { role: 'system', content: 'Be kind.' },
      { role: 'user', content: 'a' },
      { role: 'assistant', content: 'A' },
      { role: 'user', content: 'd' },
      { role: 'assistant', content: 'D so far' },
      { role: 'user', content: 'now' },
    ]);
  });
});
