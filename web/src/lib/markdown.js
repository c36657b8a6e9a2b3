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

export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.render(text ?? ''), { ADD_ATTR: ['target'] });
}

/**
 * Where the last top-level block of `text` starts (a character offset). Everything before it is made
 * of finished blocks: text that streams in later can only extend or follow the last block.
 */
export function lastBlockStart(text) {
  const tokens = md.parse(text, {});
  let line = -1;
  for (const token of tokens) {
    if (token.level === 0 && token.map && token.nesting !== -1) line = token.map[0];
  }
  if (line <= 0) return 0;
  let offset = 0;
  for (let i = 0; i < line; i += 1) {
    const next = text.indexOf('\n', offset);
    if (next < 0) return 0;
    offset = next + 1;
  }
  return offset;
}
