// Model output -> safe HTML. markdown-it with html disabled escapes any HTML the model writes, and
// DOMPurify cleans the result again so nothing executable can reach v-html.

import DOMPurify from 'dompurify';
import MarkdownIt from 'markdown-it';

const md = new MarkdownIt({ html: false, linkify: true, breaks: true });

const renderLinkOpen =
  md.renderer.rules.link_open ?? ((tokens, idx, options, env, self) => self.renderToken(tokens, idx, options));
md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
  // Links leave the chat instead of replacing it, without giving the new page a handle on this one.
  tokens[idx].attrSet('target', '_blank');
  tokens[idx].attrSet('rel', 'noopener noreferrer nofollow');
  return renderLinkOpen(tokens, idx, options, env, self);
};

// Wide tables scroll sideways in their own box instead of squeezing every column to one letter.
md.renderer.rules.table_open = () => '<div class="table-scroll"><table>\n';
md.renderer.rules.table_close = () => '</table></div>\n';

// Code blocks get a header with the language and a Copy button (handled by the message, by delegation).
const renderFence = md.renderer.rules.fence;
md.renderer.rules.fence = (tokens, idx, options, env, self) => {
  const lang = md.utils.escapeHtml(tokens[idx].info.trim().split(/\s+/)[0] || '');
  return (
    `<div class="code-block"><div class="code-head"><span class="code-lang">${lang || 'text'}</span>` +
    '<button type="button" class="copy-code" data-copy-code>Copy</button></div>' +
    `${renderFence(tokens, idx, options, env, self)}</div>`
  );
};

const SANITIZE = { ADD_ATTR: ['target'] };

export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.render(text ?? ''), SANITIZE);
}

function lineOffset(text, line) {
  let offset = 0;
  for (let i = 0; i < line; i += 1) {
    const next = text.indexOf('\n', offset);
    if (next < 0) return text.length;
    offset = next + 1;
  }
  return offset;
}

/**
 * Render streaming text in one parse: the finished blocks (all but the last top-level block, or all
 * when `final`) as an HTML string, and the open last block as a sanitised DocumentFragment ready to be
 * put in the page without parsing HTML a second time. `split` is where the finished text ends.
 */
export function renderStreaming(text, { final = false } = {}) {
  const env = {};
  const tokens = md.parse(text, env);
  let index = tokens.length;
  let split = text.length;
  if (!final) {
    for (let i = tokens.length - 1; i >= 0; i -= 1) {
      const t = tokens[i];
      if (t.level === 0 && t.map && t.nesting !== -1) {
        index = i;
        split = t.map[0] > 0 ? lineOffset(text, t.map[0]) : 0;
        break;
      }
    }
    if (index === tokens.length) split = 0;
  }
  // One sanitising pass (each builds a document): every top-level block renders to one top-level
  // element, so the open block is the fragment's last element when there is one.
  const open = DOMPurify.sanitize(md.renderer.render(tokens, md.options, env), {
    ...SANITIZE,
    RETURN_DOM_FRAGMENT: true,
  });
  const blocks = tokens.filter((t) => t.level === 0 && t.map && t.nesting !== -1).length;
  if (open.children.length !== blocks) {
    // Not one element per block after all: render the two parts apart.
    return {
      finished: index > 0 ? DOMPurify.sanitize(md.renderer.render(tokens.slice(0, index), md.options, env), SANITIZE) : '',
      open: DOMPurify.sanitize(md.renderer.render(tokens.slice(index), md.options, env), {
        ...SANITIZE,
        RETURN_DOM_FRAGMENT: true,
      }),
      split,
    };
  }
  let finished = '';
  if (index > 0) {
    const holder = document.createElement('div');
    const last = index < tokens.length ? open.lastElementChild : null;
    while (open.firstChild && open.firstChild !== last) holder.append(open.firstChild);
    finished = holder.innerHTML;
  }
  return { finished, open, split };
}
