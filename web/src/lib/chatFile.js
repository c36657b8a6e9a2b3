// Export and import of conversations as JSON files. Import checks everything before taking anything,
// so a bad file changes nothing and says what is wrong.

export const FILE_FORMAT = 'pibloom.chats';
export const FILE_VERSION = 1;
const MAX_BYTES = 50 * 1024 * 1024;

/** The JSON text of a file holding `conversations`. */
export function exportChats(conversations, now = Date.now()) {
  return JSON.stringify(
    { format: FILE_FORMAT, version: FILE_VERSION, exportedAt: new Date(now).toISOString(), conversations },
    null,
    2,
  );
}

export function exportFileName(conversations, now = Date.now()) {
  const day = new Date(now).toISOString().slice(0, 10);
  if (conversations.length !== 1) return `pibloom-chats-${day}.json`;
  const slug = conversations[0].title.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40);
  return `pibloom-${slug || 'chat'}-${day}.json`;
}

export class ImportError extends Error {}

function checkMessage(m, where) {
  if (!m || typeof m !== 'object') throw new ImportError(`${where} is not an object.`);
  if (!['user', 'assistant'].includes(m.role)) throw new ImportError(`${where} has role "${m.role}"; expected user or assistant.`);
  if (typeof m.content !== 'string') throw new ImportError(`${where} has no text content.`);
  if (m.versions != null) {
    const ok =
      Array.isArray(m.versions) &&
      m.versions.every((v) => v && typeof v === 'object' && typeof v.content === 'string') &&
      Number.isInteger(m.version) &&
      m.version >= 0 &&
      m.version < m.versions.length;
    if (!ok) throw new ImportError(`${where} has alternative replies that are not valid.`);
  }
}

/**
 * Parse and check a file's text; returns the conversations in it (as stored, ids not yet made unique).
 * Throws ImportError with a message for people when the file is not a piBLOOM export.
 */
export function parseChatFile(text) {
  if (text.length > MAX_BYTES) throw new ImportError('The file is larger than 50 MB.');
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    throw new ImportError('The file is not JSON.');
  }
  if (data?.format !== FILE_FORMAT) throw new ImportError('The file is not a piBLOOM chat export.');
  if (data.version !== FILE_VERSION) throw new ImportError(`The file is version ${data.version}; this page reads version ${FILE_VERSION}.`);
  if (!Array.isArray(data.conversations) || !data.conversations.length) {
    throw new ImportError('The file holds no conversations.');
  }
  return data.conversations.map((c, i) => {
    const where = `Conversation ${i + 1}`;
    if (!c || typeof c !== 'object' || !Array.isArray(c.messages)) throw new ImportError(`${where} has no message list.`);
    if (c.title != null && typeof c.title !== 'string') throw new ImportError(`${where} has a title that is not text.`);
    c.messages.forEach((m, j) => checkMessage(m, `${where}, message ${j + 1},`));
    return {
      id: typeof c.id === 'string' ? c.id : '',
      title: c.title || 'Imported chat',
      createdAt: Number(c.createdAt) || 0,
      updatedAt: Number(c.updatedAt) || 0,
      messages: c.messages.map((m) => ({
        ...m,
        id: typeof m.id === 'string' ? m.id : '',
        status: m.status === 'streaming' ? 'stopped' : typeof m.status === 'string' ? m.status : 'done',
      })),
    };
  });
}
