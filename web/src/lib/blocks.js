// Incremental rendering of a streaming reply. Text only ever grows at the end, so finished Markdown
// blocks are rendered once and kept; only the open (last) block is parsed and rendered again. The
// cost of each update follows the size of the open block, not of the whole reply.

import { renderStreaming } from './markdown.js';

export class BlockRenderer {
  constructor() {
    this.reset();
  }

  reset() {
    this.text = '';
    this.frozenEnd = 0; // text before this offset is rendered into `blocks` for good
    this.blocks = []; // [{ id, html }]
    this.open = null; // DocumentFragment of the open block
    this.renders = 0;
    this.generation = (this.generation ?? 0) + 1; // changes whenever `blocks` does
  }

  /**
   * Bring the rendering up to `text`; `final` freezes everything (the reply is over). Returns the
   * finished blocks ([{ id, html }], only ever appended to) and the open block (a DocumentFragment).
   */
  update(text, { final = false } = {}) {
    if (!text.startsWith(this.text) || text.length < this.frozenEnd) this.reset();
    this.text = text;
    const { finished, open, split } = renderStreaming(text.slice(this.frozenEnd), { final });
    if (finished) {
      this.blocks.push({ id: this.blocks.length, html: finished });
      this.generation += 1;
    }
    this.frozenEnd += split;
    this.open = open;
    this.renders += 1;
    return { blocks: this.blocks, open: this.open };
  }
}
