import { describe, expect, it, vi } from 'vitest';
import { BlockRenderer } from '../src/lib/blocks.js';
import { perFrame } from '../src/lib/frame.js';
import * as markdown from '../src/lib/markdown.js';

const REPLY = [
  '# Title\n\nFirst paragraph with **bold**.\n\n',
  '- one\n- two\n\n',
  '```js\nconst a = 1;\n\nconst b = 2;\n```\n\n',
  '| a | b |\n|---|---|\n| 1 | 2 |\n\n',
  '> quote\n\nLast words <script>x()</script>',
].join('');

function textOf(html, fragment = null) {
  const el = document.createElement('div');
  el.innerHTML = html;
  if (fragment) el.append(fragment.cloneNode(true));
  return el;
}

describe('BlockRenderer', () => {
  it('streamed piece by piece, ends with the same document as one render of the whole', () => {
    const renderer = new BlockRenderer();
    for (let i = 1; i <= REPLY.length; i += 3) renderer.update(REPLY.slice(0, i));
    const { blocks, open } = renderer.update(REPLY, { final: true });
    const streamed = textOf(blocks.map((b) => b.html).join(''), open);
    const whole = textOf(markdown.renderMarkdown(REPLY));
    expect(streamed.textContent.replace(/\s+/g, ' ')).toBe(whole.textContent.replace(/\s+/g, ' '));
    for (const selector of ['h1', 'ul li', 'pre code', 'table td', 'blockquote', 'script']) {
      expect(streamed.querySelectorAll(selector).length, selector).toBe(whole.querySelectorAll(selector).length);
    }
    // The code block with a blank line inside stayed one block.
    expect(streamed.querySelector('pre code').textContent).toBe('const a = 1;\n\nconst b = 2;\n');
  });

  it('renders only the open block again: finished blocks are kept as they are', () => {
    const spy = vi.spyOn(markdown, 'renderStreaming');
    const renderer = new BlockRenderer();
    const finished = 'Finished paragraph one.\n\nFinished paragraph two.\n\n';
    renderer.update(finished + 'Open');
    const kept = renderer.blocks[0];
    spy.mockClear();
    for (const more of [' bl', 'ock', ' grows']) renderer.update(renderer.text + more);
    expect(renderer.blocks[0]).toBe(kept);
    expect(spy).toHaveBeenCalledTimes(3);
    // Each update rendered the open block only, never the finished text.
    for (const [source] of spy.mock.calls) expect(source.startsWith('Finished')).toBe(false);
    expect(renderer.open.textContent).toContain('Open block grows');
  });

  it('starts over when the text is replaced rather than extended', () => {
    const renderer = new BlockRenderer();
    renderer.update('one\n\ntwo', { final: true });
    const { blocks, open } = renderer.update('other', { final: true });
    expect(textOf(blocks.map((b) => b.html).join(''), open).textContent.trim()).toBe('other');
  });
});

describe('perFrame', () => {
  it('runs at most once per frame however often it is asked', () => {
    const frames = [];
    const fn = vi.fn();
    const schedule = perFrame(fn, { request: (cb) => frames.push(cb), cancel: () => {} });
    for (let i = 0; i < 50; i += 1) schedule();
    expect(frames).toHaveLength(1);
    frames.shift()();
    expect(fn).toHaveBeenCalledTimes(1);
    schedule();
    schedule();
    expect(frames).toHaveLength(1);
  });
});
