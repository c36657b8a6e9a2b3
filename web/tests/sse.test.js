import { describe, expect, it, vi } from 'vitest';
import { readEventStream } from '../src/lib/sse.js';
import { byteStream } from './helpers.js';

async function collect(stream) {
  const out = [];
  for await (const event of readEventStream(stream)) out.push(event.data);
  return out;
}

describe('readEventStream', () => {
  const payload = 'data: {"t":"héllo"}\n\ndata: {"t":"🌸 bloom"}\n\n: keep-alive comment\n\ndata: [DONE]\n\n';
  const expected = ['{"t":"héllo"}', '{"t":"🌸 bloom"}', '[DONE]'];
  const bytes = new TextEncoder().encode(payload);

  it('parses events whole when the stream is split at every possible byte boundary', async () => {
    // Splits inside the multi-byte é and 🌸, inside "data:", between \n and \n...
    for (let cut = 1; cut < bytes.length; cut += 1) {
      const events = await collect(byteStream([bytes.slice(0, cut), bytes.slice(cut)]));
      expect(events, `split at byte ${cut}`).toEqual(expected);
    }
  });

  it('parses a stream delivered one byte at a time', async () => {
    const oneByOne = Array.from(bytes, (b) => new Uint8Array([b]));
    expect(await collect(byteStream(oneByOne))).toEqual(expected);
  });

  it('accepts CRLF line endings and multi-line data', async () => {
    const events = await collect(byteStream(['data: first\r\ndata: second\r\n\r\n', 'event: x\r\ndata: 3\r\n\r\n']));
    expect(events).toEqual(['first\nsecond', '3']);
  });

  it('cancels the underlying stream when the reader stops early', async () => {
    let cancelled = false;
    let n = 0;
    // An endless stream, like a connection that is still open.
    const stream = new ReadableStream({
      pull(controller) {
        n += 1;
        controller.enqueue(new TextEncoder().encode(`data: ${n}\n\n`));
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const event of readEventStream(stream)) {
      expect(event.data).toBe('1');
      break;
    }
    // Cancellation travels back through the pipe asynchronously.
    await vi.waitFor(() => expect(cancelled).toBe(true));
  });
});
