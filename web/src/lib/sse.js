// Server-sent events from a fetch() body, parsed by eventsource-parser.

import { EventSourceParserStream } from 'eventsource-parser/stream';

/**
 * Yield each event ({ data, event, id }) in `body`, a ReadableStream of bytes; the stream ends early
 * when `signal` fires.
 * TextDecoderStream keeps multi-byte characters whole across chunk boundaries, and the parser keeps
 * events whole across lines split between chunks.
 */
export async function* readEventStream(body, signal) {
  const reader = body
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream())
    .getReader();
  let finished = false;
  const cancel = () => reader.cancel().catch(() => {});
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        finished = true;
        return;
      }
      yield value;
    }
  } finally {
    // The consumer stopped early (e.g. [DONE] or an error): release the connection.
    signal?.removeEventListener('abort', cancel);
    if (!finished) await cancel();
  }
}
