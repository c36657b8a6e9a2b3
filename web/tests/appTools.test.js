// The chat page's tools and the smaller defects of issue 15, through the whole App.
import { flushPromises, mount } from '@vue/test-utils';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import App from '../src/App.vue';
import SettingsDialog from '../src/components/SettingsDialog.vue';
import { STORAGE_KEY } from '../src/composables/useConversations.js';
import { DEFAULTS, useSettings } from '../src/composables/useSettings.js';
import { exportChats } from '../src/lib/chatFile.js';
import { chatSse, fakeCount, jsonResponse, memoryStorage, sseResponse } from './helpers.js';

const card = (extra = {}) => ({ object: 'list', data: [{ id: 'tiny', object: 'model', max_model_len: 4096, ...extra }] });

beforeEach(() => localStorage.clear());
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
  document.body.innerHTML = '';
});

function api(chatResponses, models = card()) {
  const calls = [];
  vi.stubGlobal(
    'fetch',
    vi.fn(async (url, init) => {
      const body = init?.body ? JSON.parse(init.body) : null;
      if (url === '/api/v1/models') return jsonResponse(models);
      if (url === '/api/tokenize') return jsonResponse({ tokens: [], count: fakeCount(body.messages), max_model_len: 4096 });
      calls.push(body);
      const next = chatResponses.shift();
      return next ? next() : sseResponse(chatSse([`echo ${body.messages.at(-1).content}`]));
    }),
  );
  return calls;
}

async function type(wrapper, text) {
  const box = wrapper.find('textarea#message');
  await box.setValue(text);
  await box.trigger('keydown', { key: 'Enter' });
}

const replies = (w) => w.findAll('.message.assistant[data-status="done"]');
async function mountApp() {
  const wrapper = mount(App, { attachTo: document.body });
  await flushPromises();
  return wrapper;
}

describe('conversations', () => {
  it('reopens the last open conversation after a reload', async () => {
    api([]);
    const first = await mountApp();
    await type(first, 'first chat');
    await vi.waitFor(() => expect(replies(first)).toHaveLength(1));
    await first.find('.new-chat').trigger('click');
    await type(first, 'second chat');
    await vi.waitFor(() => expect(replies(first)).toHaveLength(1));
    await first.find('button.conversation[title="first chat"]').trigger('click');
    window.dispatchEvent(new Event('pagehide'));
    first.unmount();

    const second = await mountApp();
    expect(second.find('h1').text()).toBe('first chat');
    expect(second.findAll('.message').map((m) => m.text())[0]).toContain('first chat');
    second.unmount();
  });

  it('keeps a title exactly as typed, shown as text', async () => {
    api([]);
    const wrapper = await mountApp();
    const typed = '__init__ *args #1 ~x~ `x` <img src=x onerror=alert(1)>';
    await type(wrapper, typed);
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    expect(wrapper.find('h1').text()).toBe(typed);
    expect(wrapper.find('button.conversation').text()).toBe(typed);
    expect(wrapper.find('h1 img, .conversations img').exists()).toBe(false);
    wrapper.unmount();
  });

  it('deletes with an Undo that brings the chat back', async () => {
    api([]);
    const wrapper = await mountApp();
    await type(wrapper, 'precious');
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    await wrapper.find('button[aria-label="Delete conversation: precious"]').trigger('click');
    expect(wrapper.findAll('button.conversation')).toHaveLength(0);
    const toast = wrapper.find('.toast');
    expect(toast.text()).toContain('Deleted “precious”');
    await toast.find('button').trigger('click');
    expect(wrapper.findAll('button.conversation').map((b) => b.text())).toEqual(['precious']);
    expect(wrapper.find('h1').text()).toBe('precious');
    expect(wrapper.find('.toast').exists()).toBe(false);
    wrapper.unmount();
  });

  it('renames and searches chats', async () => {
    api([]);
    const wrapper = await mountApp();
    for (const text of ['about cats', 'about dogs']) {
      await wrapper.find('.new-chat').trigger('click');
      await type(wrapper, text);
      await vi.waitFor(() => expect(wrapper.find('.message.assistant[data-status="done"]').exists()).toBe(true));
    }
    await wrapper.find('button[aria-label="Rename conversation: about cats"]').trigger('click');
    const input = wrapper.find('input.rename');
    await input.setValue('  Feline <b>facts</b> ');
    await input.trigger('keydown', { key: 'Enter' });
    expect(wrapper.findAll('button.conversation').map((b) => b.text())).toEqual(['about dogs', 'Feline <b>facts</b>']);

    // Search looks at titles and at the text of the messages.
    const search = wrapper.find('input#chat-search');
    await search.setValue('feline');
    expect(wrapper.findAll('button.conversation').map((b) => b.text())).toEqual(['Feline <b>facts</b>']);
    await search.setValue('echo about dogs');
    expect(wrapper.findAll('button.conversation').map((b) => b.text())).toEqual(['about dogs']);
    await search.setValue('nothing like it');
    expect(wrapper.text()).toContain('No chat matches your search.');
    wrapper.unmount();
  });
});

describe('import and export', () => {
  const file = (text) => ({ text: async () => text, name: 'chats.json' });
  async function importText(wrapper, text) {
    const input = wrapper.find('input[type="file"]');
    Object.defineProperty(input.element, 'files', { value: [file(text)], configurable: true });
    await input.trigger('change');
    await flushPromises();
    return wrapper.find('[data-testid="import-notice"]').text();
  }

  it('imports an export beside the existing chats, never replacing one', async () => {
    api([]);
    const wrapper = await mountApp();
    await type(wrapper, 'mine');
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    const id = localStorage.getItem('pibloom.active.v1');
    const exported = exportChats([
      { id, title: 'same id, other chat', createdAt: 1, updatedAt: 2, messages: [{ id: 'm1', role: 'user', content: 'hi', status: 'done' }] },
      { id: 'other', title: 'second', createdAt: 1, updatedAt: 3, messages: [] },
    ]);
    expect(await importText(wrapper, exported)).toBe('Imported 2 chats.');
    const titles = wrapper.findAll('button.conversation').map((b) => b.text());
    expect(titles.sort()).toEqual(['mine', 'same id, other chat', 'second']);
    wrapper.unmount();
  });

  it.each([
    ['not json', '{oops', 'Import failed: The file is not JSON.'],
    ['another format', JSON.stringify({ hello: 1 }), 'Import failed: The file is not a piBLOOM chat export.'],
    [
      'a bad message',
      JSON.stringify({ format: 'pibloom.chats', version: 1, conversations: [{ messages: [{ role: 'system', content: 'x' }] }] }),
      'Import failed: Conversation 1, message 1, has role "system"; expected user or assistant.',
    ],
  ])('rejects %s with a clear message and keeps every chat', async (_, text, message) => {
    api([]);
    const wrapper = await mountApp();
    await type(wrapper, 'keep me');
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    expect(await importText(wrapper, text)).toBe(message);
    expect(wrapper.findAll('button.conversation').map((b) => b.text())).toEqual(['keep me']);
    wrapper.unmount();
  });
});

describe('replies', () => {
  it('regenerates with alternatives switched by < 1/2 >, and edits a message to resend it', async () => {
    api([() => sseResponse(chatSse(['first take'])), () => sseResponse(chatSse(['second take']))]);
    const wrapper = await mountApp();
    await type(wrapper, 'joke please');
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    await wrapper.find('button[aria-label="Regenerate reply"]').trigger('click');
    await vi.waitFor(() => expect(wrapper.find('[data-testid="version"]').exists()).toBe(true));
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    expect(wrapper.find('[data-testid="version"]').text()).toBe('2/2');
    expect(wrapper.find('.message.assistant .markdown').text()).toBe('second take');
    await wrapper.find('button[aria-label="Previous reply"]').trigger('click');
    expect(wrapper.find('[data-testid="version"]').text()).toBe('1/2');
    expect(wrapper.find('.message.assistant .markdown').text()).toBe('first take');

    await wrapper.find('button[aria-label="Edit and resend"]').trigger('click');
    const editor = wrapper.find('form.edit textarea');
    await editor.setValue('a better joke please');
    await wrapper.find('form.edit').trigger('submit');
    await vi.waitFor(() => expect(wrapper.find('.message.assistant .markdown').text()).toBe('echo a better joke please'));
    expect(wrapper.findAll('.message.user .bubble').map((b) => b.text())).toEqual(['a better joke please']);
    wrapper.unmount();
  });

  it('shows tokens, tokens/s and the prompt size under a reply, from the stream', async () => {
    const usage = { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 };
    const body = chatSse(['a', 'b', 'c'], { done: false }) + `data: ${JSON.stringify({ choices: [], usage })}\n\ndata: [DONE]\n\n`;
    const calls = api([() => sseResponse(body)]);
    const wrapper = await mountApp();
    await type(wrapper, 'count');
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    expect(calls[0].stream_options).toEqual({ include_usage: true });
    expect(wrapper.find('[data-testid="reply-stats"]').text()).toMatch(/^3 tokens · [\d.]+ tokens\/s · prompt 12$/);
    // The meter follows the last reply's usage.
    expect(wrapper.find('[data-testid="context-meter"] meter').attributes('value')).toBe('15');
    wrapper.unmount();
  });

  it('shows the server’s own message beside the plain summary', async () => {
    api([() => jsonResponse({ error: { message: 'rate limit: 10 per minute per client' } }, 429, { 'Retry-After': '3' })]);
    const wrapper = await mountApp();
    await type(wrapper, 'again');
    await vi.waitFor(() => expect(wrapper.find('[role="alert"]').exists()).toBe(true));
    const banner = wrapper.find('[role="alert"]');
    expect(banner.text()).toContain('Slow down');
    expect(banner.text()).toContain('Too many requests were sent in a short time. Try again in 3 seconds.');
    expect(banner.find('[data-testid="server-message"]').text()).toBe('Server: “rate limit: 10 per minute per client”');
    wrapper.unmount();
  });

  it('keeps the Stop button to the chat that is replying', async () => {
    let release;
    api([() => new Promise((resolve) => (release = () => resolve(sseResponse(chatSse(['late'])))))]);
    const wrapper = await mountApp();
    await type(wrapper, 'slow one');
    await vi.waitFor(() => expect(wrapper.find('button[aria-label="Stop generating"]').exists()).toBe(true));
    await wrapper.find('.new-chat').trigger('click');
    expect(wrapper.find('button[aria-label="Stop generating"]').exists()).toBe(false);
    expect(wrapper.find('button[aria-label="Send message"]').exists()).toBe(true);
    await wrapper.find('button.conversation').trigger('click');
    expect(wrapper.find('button[aria-label="Stop generating"]').exists()).toBe(true);
    await vi.waitFor(() => expect(release).toBeTypeOf('function'));
    release();
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    wrapper.unmount();
  });
});

describe('a full context', () => {
  it('leaves out the oldest turn, says so where it was cut, and shows the meter', async () => {
    // 700 tokens of context less 512 kept for the reply leave 188; each 60-word message costs 64.
    const long = (w) => Array(60).fill(w).join(' ');
    const calls = api([], card({ max_model_len: 700 }));
    const wrapper = await mountApp();
    await type(wrapper, long('old'));
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    expect(wrapper.find('[data-testid="context-cut"]').exists()).toBe(false);
    await type(wrapper, long('new'));
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(2));
    expect(calls[1].messages.map((m) => m.content.split(' ')[0])).toEqual(['new']);
    // The note sits right before the first message that was still sent.
    const items = wrapper.findAll('.messages-inner > *');
    const cut = items.findIndex((el) => el.attributes('data-testid') === 'context-cut');
    expect(cut).toBe(2);
    expect(items[3].text()).toContain('new new');
    expect(wrapper.find('[data-testid="context-cut"]').text()).toContain('no longer fit in the model');
    expect(wrapper.find('[data-testid="context-meter"]').text()).toContain('1 older turn left out');
    wrapper.unmount();
  });

  it('refuses a message that cannot fit alone, with a clear message and no request', async () => {
    const calls = api([], card({ max_model_len: 560 }));
    const wrapper = await mountApp();
    await type(wrapper, Array(60).fill('word').join(' '));
    await vi.waitFor(() => expect(wrapper.find('[role="alert"]').exists()).toBe(true));
    expect(calls).toHaveLength(0);
    const banner = wrapper.find('[role="alert"]');
    expect(banner.text()).toContain('Message too long');
    expect(banner.text()).toContain('it needs 64 tokens, and 48 are left');
    // Retrying would fail the same way: no Retry, the message can be edited instead.
    expect(banner.findAll('button').map((b) => b.text())).not.toContain('Retry');
    expect(wrapper.find('[data-testid="turn-note"]').text()).toContain('Not sent');
    wrapper.unmount();
  });
});

describe('settings', () => {
  it('sends the sampling settings the api accepts, with its names', async () => {
    localStorage.setItem(
      'pibloom.settings.v1',
      JSON.stringify({ topP: 0.9, topK: 40, repetitionPenalty: 1.2, stop: 'END\n\n###', useSeed: true, seed: 7 }),
    );
    const calls = api([]);
    const wrapper = await mountApp();
    await type(wrapper, 'go');
    await vi.waitFor(() => expect(replies(wrapper)).toHaveLength(1));
    expect(calls[0]).toMatchObject({ top_p: 0.9, top_k: 40, repetition_penalty: 1.2, stop: ['END', '###'], seed: 7 });
    expect(calls[0].response_format).toBeUndefined();
    wrapper.unmount();
  });

  it('offers "JSON reply" only when the model card advertises response_format', async () => {
    const props = { open: true, settings: { ...DEFAULTS } };
    const without = mount(SettingsDialog, { props: { ...props, model: { id: 'm', contextLength: 1, capabilities: [] } } });
    expect(without.find('[data-testid="json-switch"]').exists()).toBe(false);
    without.unmount();
    const withIt = mount(SettingsDialog, {
      props: { ...props, model: { id: 'm', contextLength: 1, capabilities: ['response_format'] } },
    });
    await withIt.find('#json-reply').setValue(true);
    expect(withIt.emitted('update')).toEqual([[{ json: true }]]);
    withIt.unmount();

    // And the request carries it only then.
    localStorage.setItem('pibloom.settings.v1', JSON.stringify({ json: true }));
    let calls = api([]);
    let app = await mountApp();
    await type(app, 'plain');
    await vi.waitFor(() => expect(replies(app)).toHaveLength(1));
    expect(calls[0].response_format).toBeUndefined();
    app.unmount();
    calls = api([], card({ capabilities: ['response_format'] }));
    app = await mountApp();
    await app.find('.new-chat').trigger('click');
    await type(app, 'as json');
    await vi.waitFor(() => expect(replies(app)).toHaveLength(1));
    expect(calls[0].response_format).toEqual({ type: 'json_object' });
    app.unmount();
  });

  it('keeps the last valid value when a number field is cleared', async () => {
    const storage = memoryStorage();
    const { settings, update } = useSettings({ storage });
    const wrapper = mount(SettingsDialog, {
      props: { open: true, settings, model: null, 'onUpdate': update },
      attachTo: document.body,
    });
    const field = wrapper.find('#max-tokens');
    field.element.value = '300';
    await field.trigger('change');
    await flushPromises();
    expect(settings.maxTokens).toBe(300);
    for (const typed of ['', 'abc', '   ']) {
      field.element.value = typed;
      await field.trigger('change');
      await flushPromises();
      expect(settings.maxTokens).toBe(300);
      expect(field.element.value).toBe('300');
    }
    const topK = wrapper.find('#top-k');
    topK.element.value = '';
    await topK.trigger('change');
    await flushPromises();
    expect(settings.topK).toBe(0);
    expect(topK.element.value).toBe('0');
    wrapper.unmount();
    expect(JSON.parse(storage.getItem('pibloom.settings.v1') ?? '{}').maxTokens ?? 300).toBe(300);
  });
});

it('stores conversations under the same key as before', () => {
  expect(STORAGE_KEY).toBe('pibloom.conversations.v1');
});
