// Syntax highlighting for finished code blocks, loaded on first use so the first page load stays
// small. highlight.js core with a handful of common languages: it marks tokens with classes (the
// page's Content-Security-Policy forbids inline styles, which shiki's output relies on).

/** Blocks bigger than this stay plain: highlighting them would block the page for too long. */
export const MAX_HIGHLIGHT_CHARS = 20_000;
/** Highlight for at most this long at a time, then let the page handle input and frames. */
const SLICE_MS = 8;

let loading = null;

function load() {
  loading ??= import('./highlightLanguages.js').then((m) => m.default);
  return loading;
}

/** Highlight every finished, not yet highlighted code block under `root`. */
export async function highlightWithin(root) {
  const blocks = [...root.querySelectorAll('pre code[class*="language-"]:not([data-highlighted])')].filter(
    (el) => el.textContent.length <= MAX_HIGHLIGHT_CHARS,
  );
  if (!blocks.length) return 0;
  const hljs = await load();
  let done = 0;
  let sliceStart = performance.now();
  for (const el of blocks) {
    if (performance.now() - sliceStart > SLICE_MS) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      sliceStart = performance.now();
    }
    const lang = /language-([\w+#-]+)/.exec(el.className)?.[1];
    if (!el.isConnected || el.dataset.highlighted || !lang || !hljs.getLanguage(lang)) continue;
    hljs.highlightElement(el);
    done += 1;
  }
  return done;
}
