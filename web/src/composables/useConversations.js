// Conversations live in this browser only (localStorage); nothing is stored on the server.

import { computed, getCurrentScope, onScopeDispose, ref, watch } from 'vue';
import { newId } from '../lib/ids.js';

export const STORAGE_KEY = 'pibloom.conversations.v1';
export const ACTIVE_KEY = 'pibloom.active.v1';
const TITLE_MAX = 60;
const SAVE_DELAY_MS = 300;

/** A short title from the first message: one line, as typed (shown as text), cut at a word. */
export function titleFrom(text) {
  const line = String(text).replace(/\s+/g, ' ').trim();
  if (!line) return 'New chat';
  if (line.length <= TITLE_MAX) return line;
  const cut = line.slice(0, TITLE_MAX);
  const space = cut.lastIndexOf(' ');
  return `${(space > TITLE_MAX / 2 ? cut.slice(0, space) : cut).trimEnd()}…`;
}

function validMessage(m) {
  return m && typeof m.id === 'string' && ['user', 'assistant'].includes(m.role) && typeof m.content === 'string';
}

function load(storage) {
  try {
    const raw = JSON.parse(storage.getItem(STORAGE_KEY) ?? '[]');
    if (!Array.isArray(raw)) return [];
    return raw
      .filter((c) => c && typeof c.id === 'string' && Array.isArray(c.messages))
      .map((c) => ({
        id: c.id,
        title: typeof c.title === 'string' ? c.title : 'New chat',
        createdAt: Number(c.createdAt) || 0,
        updatedAt: Number(c.updatedAt) || 0,
        // A reply that was streaming when the page closed is as good as stopped.
        messages: c.messages
          .filter(validMessage)
          .map((m) => (m.status === 'streaming' ? { ...m, status: 'stopped' } : m)),
      }));
  } catch {
    // Corrupt or foreign data: start afresh rather than break the page.
    return [];
  }
}

/**
 * The conversation list and the open conversation. `activeId` null means a fresh, unsaved chat: it
 * becomes a conversation when its first message is added, so empty chats never pile up in the list.
 */
export function useConversations({ storage = window.localStorage, now = Date.now } = {}) {
  const conversations = ref(load(storage));
  const activeId = ref(initialActive());
  const storageError = ref('');

  // Reload opens the conversation that was open; a first visit opens the most recent one.
  function initialActive() {
    let stored = null;
    try {
      stored = storage.getItem(ACTIVE_KEY);
    } catch {
      stored = null;
    }
    if (stored === 'new') return null;
    if (stored && conversations.value.some((c) => c.id === stored)) return stored;
    const recent = [...conversations.value].sort((a, b) => b.updatedAt - a.updatedAt)[0];
    return recent?.id ?? null;
  }
  watch(activeId, (id) => {
    try {
      storage.setItem(ACTIVE_KEY, id ?? 'new');
    } catch {
      // Storage disabled: reload opens the most recent conversation instead.
    }
  });

  const sorted = computed(() => [...conversations.value].sort((a, b) => b.updatedAt - a.updatedAt));
  const active = computed(() => conversations.value.find((c) => c.id === activeId.value) ?? null);

  function save() {
    try {
      storage.setItem(STORAGE_KEY, JSON.stringify(conversations.value));
      storageError.value = '';
    } catch {
      storageError.value = 'Browser storage is full: older conversations may not be kept.';
    }
  }

  let timer = null;
  function flush() {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
      save();
    }
  }
  // Streaming changes a message many times a second; write at most every SAVE_DELAY_MS.
  watch(
    conversations,
    () => {
      if (timer === null) timer = setTimeout(flush, SAVE_DELAY_MS);
    },
    { deep: true },
  );
  // Another tab changed the list: take its version, unless a reply is streaming here (this tab's next
  // write would win anyway, and the streaming message must stay the one on screen).
  function onStorage(event) {
    if (event.key !== STORAGE_KEY) return;
    if (conversations.value.some((c) => c.messages.some((m) => m.status === 'streaming'))) return;
    conversations.value = load(storage);
    if (activeId.value && !active.value) activeId.value = null;
  }
  if (typeof window !== 'undefined') {
    window.addEventListener('pagehide', flush);
    window.addEventListener('storage', onStorage);
    if (getCurrentScope()) {
      onScopeDispose(() => {
        flush();
        window.removeEventListener('pagehide', flush);
        window.removeEventListener('storage', onStorage);
      });
    }
  }

  function select(id) {
    if (conversations.value.some((c) => c.id === id)) activeId.value = id;
  }

  function startNew() {
    activeId.value = null;
  }

  /** Delete a conversation; returns what `restore` needs to undo it (null when there was none). */
  function remove(id) {
    const index = conversations.value.findIndex((c) => c.id === id);
    if (index < 0) return null;
    const [removed] = conversations.value.splice(index, 1);
    const wasActive = activeId.value === id;
    if (wasActive) activeId.value = null;
    return { conversation: removed, wasActive };
  }

  /** Undo a `remove`. */
  function restore(removed) {
    if (!removed || conversations.value.some((c) => c.id === removed.conversation.id)) return;
    conversations.value.push(removed.conversation);
    if (removed.wasActive && activeId.value === null) activeId.value = removed.conversation.id;
  }

  /** Rename a conversation; a blank name keeps the old one. */
  function rename(id, title) {
    const conversation = conversations.value.find((c) => c.id === id);
    const clean = String(title ?? '').replace(/\s+/g, ' ').trim();
    if (!conversation || !clean) return false;
    conversation.title = clean.slice(0, 200);
    return true;
  }

  /**
   * Add imported conversations beside the existing ones (never replacing any): ids that are taken
   * get new ones. Returns how many were added.
   */
  function importConversations(list) {
    const taken = new Set(conversations.value.map((c) => c.id));
    for (const c of list) {
      const id = c.id && !taken.has(c.id) ? c.id : newId();
      taken.add(id);
      const created = c.createdAt || now();
      conversations.value.push({
        ...c,
        id,
        createdAt: created,
        updatedAt: c.updatedAt || created,
        messages: c.messages.map((m) => ({ ...m, id: m.id || newId() })),
      });
    }
    return list.length;
  }

  /** Conversations whose title or text contains `query` (case-insensitive), most recent first. */
  function search(query) {
    const q = String(query ?? '').trim().toLowerCase();
    if (!q) return sorted.value;
    return sorted.value.filter(
      (c) => c.title.toLowerCase().includes(q) || c.messages.some((m) => m.content.toLowerCase().includes(q)),
    );
  }

  /**
   * Add a message to `conversation` (default: the open one, created if there is none); returns the
   * reactive message, which callers may keep changing (streaming).
   */
  function addMessage({ role, content, status = 'done' }, conversation = active.value) {
    if (!conversation) {
      const created = now();
      conversations.value.push({ id: newId(), title: 'New chat', createdAt: created, updatedAt: created, messages: [] });
      conversation = conversations.value.at(-1);
      activeId.value = conversation.id;
    }
    if (role === 'user' && !conversation.messages.some((m) => m.role === 'user')) {
      conversation.title = titleFrom(content);
    }
    conversation.messages.push({ id: newId(), role, content, status, createdAt: now() });
    conversation.updatedAt = now();
    return conversation.messages.at(-1);
  }

  function removeMessage(conversation, messageId) {
    const index = conversation.messages.findIndex((m) => m.id === messageId);
    if (index >= 0) conversation.messages.splice(index, 1);
  }

  /** Remove every message after `messageId` (editing an earlier message starts the chat over from it). */
  function truncateAfter(conversation, messageId) {
    const index = conversation.messages.findIndex((m) => m.id === messageId);
    if (index >= 0) conversation.messages.splice(index + 1);
  }

  function find(id) {
    return conversations.value.find((c) => c.id === id) ?? null;
  }

  function touch(conversation) {
    conversation.updatedAt = now();
  }

  return {
    conversations,
    sorted,
    activeId,
    active,
    storageError,
    select,
    startNew,
    remove,
    restore,
    rename,
    importConversations,
    search,
    find,
    addMessage,
    removeMessage,
    truncateAfter,
    touch,
    flush,
  };
}
