import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { nextTick } from 'vue';
import { STORAGE_KEY, titleFrom, useConversations } from '../src/composables/useConversations.js';
import { memoryStorage } from './helpers.js';

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

function clock(start = 1000) {
  let t = start;
  return () => (t += 1);
}

async function settle() {
  await nextTick();
  vi.runAllTimers();
}

describe('titleFrom', () => {
  it('keeps what the user typed, Markdown characters included, on one line', () => {
    expect(titleFrom('  # Hello\n\n**world**  ')).toBe('# Hello **world**');
    expect(titleFrom('snake_case *x* ~y~ `z` <b>tag</b>')).toBe('snake_case *x* ~y~ `z` <b>tag</b>');
  });

  it('cuts long messages at a word boundary', () => {
    const title = titleFrom('word '.repeat(40));
    expect(title.length).toBeLessThanOrEqual(61);
    expect(title.endsWith('word…')).toBe(true);
  });

  it('falls back for blank text', () => {
    expect(titleFrom('  \n ')).toBe('New chat');
  });
});

describe('useConversations', () => {
  it('creates a conversation on the first message and titles it from that message', () => {
    const store = useConversations({ storage: memoryStorage(), now: clock() });
    expect(store.active.value).toBeNull();
    store.addMessage({ role: 'user', content: 'What is a Raspberry Pi?' });
    store.addMessage({ role: 'assistant', content: 'A small computer.' });
    store.addMessage({ role: 'user', content: 'How much RAM?' });
    expect(store.conversations.value).toHaveLength(1);
    expect(store.active.value.title).toBe('What is a Raspberry Pi?');
    expect(store.active.value.messages.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
  });

  it('keeps conversations in storage and loads them in a new page', async () => {
    const storage = memoryStorage();
    const first = useConversations({ storage, now: clock() });
    first.addMessage({ role: 'user', content: 'Remember me' });
    const reply = first.addMessage({ role: 'assistant', content: '', status: 'streaming' });
    reply.content = 'Half a rep';
    await settle();

    const saved = JSON.parse(storage.getItem(STORAGE_KEY));
    expect(saved[0].title).toBe('Remember me');

    const second = useConversations({ storage, now: clock() });
    expect(second.sorted.value.map((c) => c.title)).toEqual(['Remember me']);
    const messages = second.conversations.value[0].messages;
    expect(messages[1].content).toBe('Half a rep');
    // The page that was streaming is gone: the reply is over.
    expect(messages[1].status).toBe('stopped');
  });

  it('lists the most recently used conversation first and switches between them', () => {
    const store = useConversations({ storage: memoryStorage(), now: clock() });
    store.addMessage({ role: 'user', content: 'first' });
    const firstId = store.activeId.value;
    store.startNew();
    expect(store.active.value).toBeNull();
    store.addMessage({ role: 'user', content: 'second' });
    expect(store.sorted.value.map((c) => c.title)).toEqual(['second', 'first']);

    store.select(firstId);
    store.addMessage({ role: 'assistant', content: 'reply' });
    expect(store.sorted.value.map((c) => c.title)).toEqual(['first', 'second']);
  });

  it('deletes conversations, leaving no open conversation when the open one goes', async () => {
    const storage = memoryStorage();
    const store = useConversations({ storage, now: clock() });
    store.addMessage({ role: 'user', content: 'keep' });
    const keep = store.activeId.value;
    store.startNew();
    store.addMessage({ role: 'user', content: 'drop' });
    store.remove(store.activeId.value);
    expect(store.activeId.value).toBeNull();
    expect(store.conversations.value.map((c) => c.id)).toEqual([keep]);
    await settle();
    expect(JSON.parse(storage.getItem(STORAGE_KEY)).map((c) => c.title)).toEqual(['keep']);
  });

  it('starts empty when stored data is corrupt or foreign', () => {
    expect(useConversations({ storage: memoryStorage({ [STORAGE_KEY]: '{not json' }) }).conversations.value).toEqual([]);
    const foreign = JSON.stringify([{ id: 1 }, { id: 'ok', messages: [{ id: 'm', role: 'hacker', content: 'x' }] }]);
    const store = useConversations({ storage: memoryStorage({ [STORAGE_KEY]: foreign }) });
    expect(store.conversations.value).toHaveLength(1);
    expect(store.conversations.value[0].messages).toEqual([]);
  });

  it('says so when the browser storage is full', async () => {
    const storage = memoryStorage();
    storage.setItem = () => {
      throw new DOMException('full', 'QuotaExceededError');
    };
    const store = useConversations({ storage, now: clock() });
    store.addMessage({ role: 'user', content: 'hello' });
    await settle();
    expect(store.storageError.value).toMatch(/storage is full/);
  });

  it('writes a streaming reply at most once per interval, not once per token', async () => {
    const storage = memoryStorage();
    const writes = vi.spyOn(storage, 'setItem');
    const store = useConversations({ storage, now: clock() });
    store.addMessage({ role: 'user', content: 'count' });
    const reply = store.addMessage({ role: 'assistant', content: '', status: 'streaming' });
    for (let i = 0; i < 50; i += 1) {
      reply.content += `${i} `;
      await nextTick();
    }
    vi.runAllTimers();
    expect(writes.mock.calls.filter(([key]) => key === STORAGE_KEY)).toHaveLength(1);
    expect(JSON.parse(storage.getItem(STORAGE_KEY))[0].messages[1].content).toContain('49');
  });
});

describe('useConversations across tabs', () => {
  it("takes another tab's changes from the storage event", () => {
    const storage = memoryStorage();
    const here = useConversations({ storage, now: clock() });
    here.addMessage({ role: 'user', content: 'mine' });
    const other = JSON.stringify([
      { id: 'x', title: 'from the other tab', createdAt: 1, updatedAt: 5000, messages: [] },
    ]);
    storage.setItem(STORAGE_KEY, other);
    window.dispatchEvent(new StorageEvent('storage', { key: STORAGE_KEY }));
    expect(here.sorted.value.map((c) => c.title)).toEqual(['from the other tab']);
    expect(here.activeId.value).toBeNull();
  });
});
