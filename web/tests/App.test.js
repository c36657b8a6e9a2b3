import { flushPromises, mount } from '@vue/test-utils';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import App from '../src/App.vue';
import { chatSse, fakeCount, jsonResponse, sseResponse } from './helpers.js';

const MODELS = { object: 'list', data: [{ id: 'SmolLM2-135M-Instruct', object: 'model', max_model_len: 8192 }] };

beforeEach(() => localStorage.clear());
afterEach(() => {
  vi.unstubAllGlobals();
  document.body.innerHTML = '';
});

/** fetch that answers /v1/models and /tokenize, then the queued chat responses in order. */
function api(chatResponses, { models = MODELS } = {}) {
  const calls = [];
  const fetch = vi.fn(async (url, init) => {
    const body = init?.body ? JSON.parse(init.body) : null;
    if (url === '/api/v1/models') return jsonResponse(models);
    if (url === '/api/tokenize') {
      return jsonResponse({ tokens: [], count: fakeCount(body.messages), max_model_len: models.data[0].max_model_len });
    }
    calls.push({ url, body });
    const next = chatResponses.shift();
    if (next instanceof Error) throw next;
    return next();
  });
  vi.stubGlobal('fetch', fetch);
  return calls;
}

async function type(wrapper, text) {
  const box = wrapper.find('textarea#message');
  await box.setValue(text);
  await box.trigger('keydown', { key: 'Enter' });
}

describe('App', () => {
  it('shows the model, streams a reply and lists the conversation', async () => {
    const calls = api([() => sseResponse(chatSse(['**Hi**', ', I am ', 'piBLOOM.']))]);
    const wrapper = mount(App, { attachTo: document.body });
    await flushPromises();
    expect(wrapper.find('[data-testid="model-badge"]').text()).toBe('SmolLM2-135M-Instruct');
    expect(wrapper.text()).toContain('8k context');

    await type(wrapper, 'Who are you?');
    await vi.waitFor(() => expect(wrapper.find('.message.assistant[data-status="done"]').exists()).toBe(true));
    expect(wrapper.find('.message.assistant .markdown strong').text()).toBe('Hi');
    expect(wrapper.find('.message.assistant .markdown').text()).toBe('Hi, I am piBLOOM.');
    expect(calls.at(-1).body).toMatchObject({
      model: 'SmolLM2-135M-Instruct',
      stream: true,
      messages: [{ role: 'user', content: 'Who are you?' }],
    });
    expect(wrapper.find('h1').text()).toBe('Who are you?');
    expect(wrapper.findAll('button.conversation').map((b) => b.text())).toEqual(['Who are you?']);
    wrapper.unmount();
  });

  it('explains a 503 with its Retry-After and retries when asked', async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    api([
      () => jsonResponse({ error: { message: 'queue full', type: 'overloaded' } }, 503, { 'Retry-After': '1' }),
      () => sseResponse(chatSse(['Now I can answer.'])),
    ]);
    const wrapper = mount(App, { attachTo: document.body });
    await flushPromises();
    await type(wrapper, 'Hello?');
    await vi.waitFor(() => expect(wrapper.find('[role="alert"]').exists()).toBe(true));
    const banner = wrapper.find('[role="alert"]');
    expect(banner.text()).toContain('Server busy');
    expect(banner.text()).toContain('Try again in 1 second.');
    // Back to idle: the composer offers Send again.
    expect(wrapper.find('button[aria-label="Send message"]').exists()).toBe(true);

    await vi.advanceTimersByTimeAsync(1000);
    const retry = banner.findAll('button').find((b) => b.text() === 'Retry');
    await retry.trigger('click');
    await vi.waitFor(() => expect(wrapper.find('.message.assistant[data-status="done"]').exists()).toBe(true));
    expect(wrapper.find('[role="alert"]').exists()).toBe(false);
    expect(wrapper.findAll('.message').map((m) => m.text())).toEqual(['Hello?', 'Now I can answer.']);
    vi.useRealTimers();
    wrapper.unmount();
  });

  it('says when the network is down, and shows the api as offline', async () => {
    vi.stubGlobal('fetch', async () => {
      throw new TypeError('Failed to fetch');
    });
    const wrapper = mount(App, { attachTo: document.body });
    await flushPromises();
    expect(wrapper.find('button[aria-label="API offline: try to reconnect"]').exists()).toBe(true);
    await type(wrapper, 'Is anyone there?');
    await vi.waitFor(() => expect(wrapper.find('[role="alert"]').exists()).toBe(true));
    expect(wrapper.find('[role="alert"]').text()).toContain('Connection problem');
    wrapper.unmount();
  });

  it('finds saved conversations again after a reload and deletes them', async () => {
    api([() => sseResponse(chatSse(['Saved reply']))]);
    const first = mount(App, { attachTo: document.body });
    await flushPromises();
    await type(first, 'Keep this chat');
    await vi.waitFor(() => expect(first.find('.message.assistant[data-status="done"]').exists()).toBe(true));
    window.dispatchEvent(new Event('pagehide')); // the page is going away: write now
    first.unmount();

    const second = mount(App, { attachTo: document.body });
    await flushPromises();
    const item = second.find('button.conversation');
    expect(item.text()).toBe('Keep this chat');
    await item.trigger('click');
    expect(second.findAll('.message').map((m) => m.text())).toEqual(['Keep this chat', 'Saved reply']);

    await second.find('button[aria-label="Delete conversation: Keep this chat"]').trigger('click');
    expect(second.findAll('button.conversation')).toHaveLength(0);
    expect(second.find('h1').text()).toBe('New chat');
    second.unmount();
  });
});
