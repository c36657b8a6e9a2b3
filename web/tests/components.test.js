import { mount } from '@vue/test-utils';
import { afterEach, describe, expect, it, vi } from 'vitest';
import AboutDialog from '../src/components/AboutDialog.vue';
import ChatComposer from '../src/components/ChatComposer.vue';
import ConversationList from '../src/components/ConversationList.vue';
import ErrorBanner from '../src/components/ErrorBanner.vue';
import SettingsDialog from '../src/components/SettingsDialog.vue';
import { DEFAULTS } from '../src/composables/useSettings.js';

afterEach(() => {
  vi.useRealTimers();
  document.body.innerHTML = '';
});

describe('ChatComposer', () => {
  it('sends on Enter and clears the box', async () => {
    const wrapper = mount(ChatComposer);
    const box = wrapper.find('textarea');
    await box.setValue('Hello there');
    await box.trigger('keydown', { key: 'Enter' });
    expect(wrapper.emitted('send')).toEqual([['Hello there']]);
    expect(box.element.value).toBe('');
  });

  it('does not send on Shift+Enter, nor while composing with an IME', async () => {
    const wrapper = mount(ChatComposer);
    const box = wrapper.find('textarea');
    await box.setValue('line one');
    await box.trigger('keydown', { key: 'Enter', shiftKey: true });
    await box.trigger('keydown', { key: 'Enter', isComposing: true });
    expect(wrapper.emitted('send')).toBeUndefined();
  });

  it('disables Send for an empty message', async () => {
    const wrapper = mount(ChatComposer);
    expect(wrapper.find('button[aria-label="Send message"]').attributes('disabled')).toBeDefined();
    await wrapper.find('textarea').setValue('  ');
    expect(wrapper.find('button[aria-label="Send message"]').attributes('disabled')).toBeDefined();
    await wrapper.find('textarea').setValue('hi');
    expect(wrapper.find('button[aria-label="Send message"]').attributes('disabled')).toBeUndefined();
  });

  it('turns Send into Stop while busy; Stop and Esc stop, Enter does not send', async () => {
    const wrapper = mount(ChatComposer, { props: { busy: true } });
    expect(wrapper.find('button[aria-label="Send message"]').exists()).toBe(false);
    await wrapper.find('button[aria-label="Stop generating"]').trigger('click');
    const box = wrapper.find('textarea');
    await box.setValue('next question');
    await box.trigger('keydown', { key: 'Enter' });
    await box.trigger('keydown', { key: 'Escape' });
    expect(wrapper.emitted('stop')).toHaveLength(2);
    expect(wrapper.emitted('send')).toBeUndefined();
    // The draft survives until it can be sent.
    expect(box.element.value).toBe('next question');
  });

  it('labels the message box for assistive technology', () => {
    const wrapper = mount(ChatComposer);
    const label = wrapper.find('label[for="message"]');
    expect(label.text()).toBe('Message');
    expect(wrapper.find('textarea#message').exists()).toBe(true);
  });
});

describe('ErrorBanner', () => {
  it('honours Retry-After: tells the wait and enables Retry when it is over', async () => {
    vi.useFakeTimers();
    const wrapper = mount(ErrorBanner, {
      props: { error: { kind: 'overloaded', message: 'The server is busy with other requests.', retryAfter: 2 } },
    });
    expect(wrapper.attributes('role')).toBe('alert');
    expect(wrapper.text()).toContain('Server busy');
    expect(wrapper.text()).toContain('Try again in 2 seconds.');
    const retry = () => wrapper.findAll('button').find((b) => b.text().startsWith('Retry'));
    expect(retry().attributes('disabled')).toBeDefined();
    expect(retry().text()).toBe('Retry in 2s');
    await vi.advanceTimersByTimeAsync(2000);
    expect(retry().attributes('disabled')).toBeUndefined();
    await retry().trigger('click');
    expect(wrapper.emitted('retry')).toHaveLength(1);
  });

  it('offers Retry at once for a network error, and can be dismissed', async () => {
    const wrapper = mount(ErrorBanner, {
      props: { error: { kind: 'network', message: 'Could not reach the server.', retryAfter: 0 } },
    });
    expect(wrapper.text()).toContain('Connection problem');
    const retry = wrapper.findAll('button').find((b) => b.text() === 'Retry');
    expect(retry.attributes('disabled')).toBeUndefined();
    await wrapper.find('button[aria-label="Dismiss error"]').trigger('click');
    expect(wrapper.emitted('dismiss')).toHaveLength(1);
  });
});

describe('ConversationList', () => {
  const conversations = [
    { id: 'a', title: 'First chat' },
    { id: 'b', title: 'Second chat' },
  ];

  it('selects and deletes conversations by their labelled buttons', async () => {
    const wrapper = mount(ConversationList, { props: { conversations, activeId: 'b' } });
    const items = wrapper.findAll('button.conversation');
    expect(items.map((b) => b.text())).toEqual(['First chat', 'Second chat']);
    expect(items[1].attributes('aria-current')).toBe('page');
    expect(items[0].attributes('aria-current')).toBeUndefined();
    await items[0].trigger('click');
    await wrapper.find('button[aria-label="Delete conversation: Second chat"]').trigger('click');
    expect(wrapper.emitted('select')).toEqual([['a']]);
    expect(wrapper.emitted('remove')).toEqual([['b']]);
  });

  it('says where conversations will appear when there are none', () => {
    const wrapper = mount(ConversationList, { props: { conversations: [] } });
    expect(wrapper.text()).toContain('Your conversations will appear here.');
  });
});

describe('SettingsDialog', () => {
  it('shows the model and its context size, and reports changes', async () => {
    const wrapper = mount(SettingsDialog, {
      props: { open: true, settings: { ...DEFAULTS }, model: { id: 'SmolLM2-135M-Instruct', contextLength: 8192 } },
      attachTo: document.body,
    });
    expect(wrapper.find('[role="dialog"]').attributes('aria-modal')).toBe('true');
    expect(wrapper.find('[data-testid="model-name"]').text()).toBe('SmolLM2-135M-Instruct');
    expect(wrapper.find('[data-testid="model-context"]').text()).toBe('8,192 tokens');
    // Every control has a label.
    for (const id of ['system-prompt', 'temperature', 'max-tokens']) {
      expect(wrapper.find(`label[for="${id}"]`).exists()).toBe(true);
    }
    await wrapper.find('#system-prompt').setValue('Answer in French.');
    await wrapper.find('#temperature').setValue('1.25');
    const maxTokens = wrapper.find('#max-tokens');
    maxTokens.element.value = '300';
    await maxTokens.trigger('change');
    expect(wrapper.emitted('update')).toEqual([
      [{ systemPrompt: 'Answer in French.' }],
      [{ temperature: 1.25 }],
      [{ maxTokens: 300 }],
    ]);
    wrapper.unmount();
  });

  it('moves focus in on open and closes on Escape', async () => {
    const wrapper = mount(SettingsDialog, {
      props: { open: false, settings: { ...DEFAULTS }, model: null },
      attachTo: document.body,
    });
    await wrapper.setProps({ open: true });
    await vi.waitFor(() => expect(document.activeElement?.id).toBe('system-prompt'));
    expect(wrapper.find('[data-testid="model-name"]').text()).toBe('not connected');
    await wrapper.find('[role="dialog"]').trigger('keydown', { key: 'Escape' });
    expect(wrapper.emitted('close')).toHaveLength(1);
    wrapper.unmount();
  });
});

describe('AboutDialog', () => {
  it('describes the project and names the model', () => {
    const wrapper = mount(AboutDialog, { props: { open: true, model: { id: 'tiny-model', contextLength: 512 } } });
    expect(wrapper.find('h2').text()).toBe('About piBLOOM');
    expect(wrapper.text()).toContain('self-hosted chat service');
    expect(wrapper.text()).toContain('tiny-model');
    expect(wrapper.text()).toContain('kept in this browser only');
  });
});
