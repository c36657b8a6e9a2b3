// Sending, streaming, stopping and retrying: the chat's state machine.
//   idle --send--> waiting --first token--> streaming --[DONE]/Stop/error--> idle

import { computed, ref } from 'vue';
import { ApiError, streamChatCompletion } from '../lib/api.js';

/** What the error banner shows for an error. */
export function describeError(err) {
  if (err instanceof ApiError) {
    return { kind: err.kind, message: err.message, retryAfter: err.retryAfter };
  }
  return { kind: 'unknown', message: err?.message || 'Something went wrong.', retryAfter: 0 };
}

/** The history as the api wants it: optional system prompt, then finished user/assistant turns. */
export function buildMessages(conversation, systemPrompt) {
  const messages = [];
  if (systemPrompt?.trim()) messages.push({ role: 'system', content: systemPrompt.trim() });
  for (const m of conversation.messages) {
    if (m.status === 'error' || !m.content.trim()) continue;
    messages.push({ role: m.role, content: m.content });
  }
  return messages;
}

export function useChat({ store, settings, modelInfo, stream = streamChatCompletion }) {
  const status = ref('idle');
  const error = ref(null);
  const busy = computed(() => status.value !== 'idle');
  let controller = null;

  async function run() {
    const conversation = store.active.value;
    if (!conversation) return;
    error.value = null;
    status.value = 'waiting';
    controller = new AbortController();
    const { signal } = controller;

    const model = modelInfo.model.value ?? (await modelInfo.refresh());
    if (!model) {
      status.value = 'idle';
      controller = null;
      error.value = describeError(
        modelInfo.error.value ?? new ApiError('unavailable', 'The chat service is not reachable right now.'),
      );
      return;
    }

    const messages = buildMessages(conversation, settings.systemPrompt);
    const reply = store.addMessage({ role: 'assistant', content: '', status: 'streaming' }, conversation);
    try {
      const { finishReason } = await stream(
        { model: model.id, messages, temperature: settings.temperature, maxTokens: settings.maxTokens },
        {
          signal,
          onDelta(text) {
            status.value = 'streaming';
            reply.content += text;
          },
        },
      );
      reply.status = 'done';
      if (finishReason === 'length') reply.truncated = true;
    } catch (err) {
      if (signal.aborted) {
        reply.status = 'stopped';
      } else {
        reply.status = 'error';
        error.value = describeError(err);
      }
      if (!reply.content) store.removeMessage(conversation, reply.id);
    } finally {
      store.touch(conversation);
      status.value = 'idle';
      controller = null;
    }
  }

  /** Send `text` as the next user message; ignored while a reply is in progress. */
  async function send(text) {
    const content = text.trim();
    if (!content || busy.value) return false;
    store.addMessage({ role: 'user', content });
    await run();
    return true;
  }

  /** Abort the reply in progress: the connection closes and the server stops generating. */
  function stop() {
    controller?.abort();
  }

  /** Try the last turn again, dropping a reply that failed half-way. */
  async function retry() {
    const conversation = store.active.value;
    if (!conversation || busy.value) return;
    for (const m of [...conversation.messages].reverse()) {
      if (m.role !== 'assistant' || m.status !== 'error') break;
      store.removeMessage(conversation, m.id);
    }
    if (conversation.messages.at(-1)?.role !== 'user') return;
    await run();
  }

  function dismissError() {
    error.value = null;
  }

  return { status, busy, error, send, stop, retry, dismissError };
}
