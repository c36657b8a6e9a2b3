import { mount } from '@vue/test-utils';
import { afterEach, describe, expect, it } from 'vitest';
import ChatMessage from '../src/components/ChatMessage.vue';
import { renderMarkdown } from '../src/lib/markdown.js';

const HOSTILE = [
  'Here you go:',
  '<script>window.__pwned = "script"</script>',
  '<img src="x" onerror="window.__pwned = \'img\'">',
  '<a href="javascript:window.__pwned=1">click</a> and [link](javascript:window.__pwned=2)',
  '<iframe src="https://example.com"></iframe>',
].join('\n\n');

afterEach(() => {
  delete window.__pwned;
  document.body.innerHTML = '';
});

describe('renderMarkdown', () => {
  it('renders code blocks, lists and emphasis', () => {
    const html = renderMarkdown('Some **bold** text\n\n- one\n- two\n\n```python\nprint("hi")\n```');
    const el = document.createElement('div');
    el.innerHTML = html;
    expect(el.querySelector('strong').textContent).toBe('bold');
    expect([...el.querySelectorAll('ul li')].map((li) => li.textContent)).toEqual(['one', 'two']);
    expect(el.querySelector('pre code').textContent).toBe('print("hi")\n');
    expect(el.querySelector('pre code').className).toBe('language-python');
  });

  it('escapes HTML written by the model instead of producing elements', () => {
    const el = document.createElement('div');
    el.innerHTML = renderMarkdown(HOSTILE);
    expect(el.querySelector('script, img, iframe')).toBeNull();
    expect(el.textContent).toContain('<script>window.__pwned = "script"</script>');
    expect(el.textContent).toContain('<img src="x" onerror=');
    // No element carries an event handler or a javascript: URL.
    for (const node of el.querySelectorAll('*')) {
      for (const attr of node.attributes) {
        expect(attr.name.startsWith('on')).toBe(false);
        expect(attr.value.toLowerCase()).not.toContain('javascript:');
      }
    }
  });

  it('wraps tables to scroll sideways and gives code blocks a labelled Copy button', () => {
    const el = document.createElement('div');
    el.innerHTML = renderMarkdown('| a | b |\n|---|---|\n| 1 | 2 |\n\n```sh\nls\n```\n\n<button data-copy-code>fake</button>');
    expect(el.querySelector('.table-scroll > table td').textContent).toBe('1');
    const block = el.querySelector('.code-block');
    expect(block.querySelector('.code-lang').textContent).toBe('sh');
    expect(block.querySelector('button[data-copy-code]').textContent).toBe('Copy');
    // Only the page's own buttons: the model's markup stays text.
    expect(el.querySelectorAll('button')).toHaveLength(1);
    expect(el.textContent).toContain('<button data-copy-code>fake</button>');
  });

  it('opens links in a new tab without a handle on this page', () => {
    const el = document.createElement('div');
    el.innerHTML = renderMarkdown('See [docs](https://example.com/docs) or https://example.org');
    const links = [...el.querySelectorAll('a')];
    expect(links.map((a) => a.getAttribute('href'))).toEqual(['https://example.com/docs', 'https://example.org']);
    for (const a of links) {
      expect(a.getAttribute('target')).toBe('_blank');
      expect(a.getAttribute('rel')).toContain('noopener');
    }
  });
});

describe('ChatMessage', () => {
  it('shows hostile model output as text and runs none of it', async () => {
    const wrapper = mount(ChatMessage, {
      props: { message: { id: '1', role: 'assistant', content: HOSTILE, status: 'done' } },
      attachTo: document.body,
    });
    await new Promise((resolve) => setTimeout(resolve, 20)); // give an injected onerror the chance to fire
    const reply = wrapper.find('.markdown');
    expect(reply.element.querySelector('script, img, iframe')).toBeNull();
    expect(reply.text()).toContain('<img src="x" onerror=');
    expect(reply.text()).toContain('<script>');
    expect(window.__pwned).toBeUndefined();
    wrapper.unmount();
  });

  it("shows the user's own text verbatim, without Markdown", () => {
    const wrapper = mount(ChatMessage, {
      props: { message: { id: '2', role: 'user', content: '**not bold** <b>x</b>', status: 'done' } },
    });
    expect(wrapper.find('.bubble').text()).toBe('**not bold** <b>x</b>');
    expect(wrapper.find('strong').exists()).toBe(false);
    expect(wrapper.find('b').exists()).toBe(false);
  });

  it('shows a typing indicator before the first token and a copy button after the reply', async () => {
    const message = { id: '3', role: 'assistant', content: '', status: 'streaming' };
    const wrapper = mount(ChatMessage, { props: { message } });
    expect(wrapper.find('.typing').exists()).toBe(true);
    expect(wrapper.find('button[aria-label="Copy reply"]').exists()).toBe(false);
    await wrapper.setProps({ message: { ...message, content: 'Done.', status: 'done' } });
    expect(wrapper.find('.typing').exists()).toBe(false);
    expect(wrapper.find('.markdown').text()).toBe('Done.');
    expect(wrapper.find('button[aria-label="Copy reply"]').exists()).toBe(true);
  });

  it('copies the raw Markdown of a reply', async () => {
    const copied = [];
    Object.defineProperty(window, 'isSecureContext', { value: true, configurable: true });
    Object.defineProperty(navigator, 'clipboard', {
      value: { writeText: async (text) => copied.push(text) },
      configurable: true,
    });
    const wrapper = mount(ChatMessage, {
      props: { message: { id: '4', role: 'assistant', content: '# Title\n\n`code`', status: 'done' } },
    });
    await wrapper.find('button[aria-label="Copy reply"]').trigger('click');
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(copied).toEqual(['# Title\n\n`code`']);
    expect(wrapper.find('button[aria-label="Copied"]').exists()).toBe(true);
    delete navigator.clipboard;
  });

  it('marks a stopped reply', () => {
    const wrapper = mount(ChatMessage, {
      props: { message: { id: '5', role: 'assistant', content: 'Once upon', status: 'stopped' } },
    });
    expect(wrapper.find('.note').text()).toBe('Stopped');
  });
});
