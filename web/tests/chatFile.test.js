import { describe, expect, it } from 'vitest';
import { exportChats, exportFileName, ImportError, parseChatFile } from '../src/lib/chatFile.js';

const chat = { id: 'a', title: 'Hello there!', createdAt: 1, updatedAt: 2, messages: [{ id: 'm', role: 'user', content: 'hi', status: 'done' }] };

describe('chat files', () => {
  it('round-trips an export', () => {
    const parsed = parseChatFile(exportChats([chat]));
    expect(parsed).toEqual([chat]);
    expect(exportFileName([chat], Date.parse('2026-12-02T00:00:00Z'))).toBe('pibloom-hello-there-2026-12-02.json');
    expect(exportFileName([chat, chat], Date.parse('2026-12-02T00:00:00Z'))).toBe('pibloom-chats-2026-12-02.json');
  });

  it('turns a reply that was streaming into a stopped one', () => {
    const streaming = { ...chat, messages: [{ role: 'assistant', content: 'par', status: 'streaming' }] };
    expect(parseChatFile(exportChats([streaming]))[0].messages[0].status).toBe('stopped');
  });

  it.each([
    ['[]', 'The file is not a piBLOOM chat export.'],
    [JSON.stringify({ format: 'pibloom.chats', version: 2, conversations: [] }), 'The file is version 2; this page reads version 1.'],
    [JSON.stringify({ format: 'pibloom.chats', version: 1, conversations: [] }), 'The file holds no conversations.'],
    [JSON.stringify({ format: 'pibloom.chats', version: 1, conversations: [{ title: 'x' }] }), 'Conversation 1 has no message list.'],
    [
      JSON.stringify({ format: 'pibloom.chats', version: 1, conversations: [{ messages: [{ role: 'user', content: 5 }] }] }),
      'Conversation 1, message 1, has no text content.',
    ],
    [
      JSON.stringify({
        format: 'pibloom.chats',
        version: 1,
        conversations: [{ messages: [{ role: 'assistant', content: 'x', versions: [{ content: 1 }], version: 0 }] }],
      }),
      'Conversation 1, message 1, has alternative replies that are not valid.',
    ],
  ])('rejects %s', (text, message) => {
    expect(() => parseChatFile(text)).toThrow(ImportError);
    expect(() => parseChatFile(text)).toThrow(message);
  });
});
