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

export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.render(text ?? ''), { ADD_ATTR: ['target'] });
}
