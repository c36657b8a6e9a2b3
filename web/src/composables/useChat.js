// Sending, streaming, stopping, retrying, regenerating and editing: the chat's state machine, kept
// per conversation (one chat can stream while another is read or used).
//   idle --send--> waiting --first token--> streaming --[DONE]/Stop/error--> idle

import { computed, reactive } from 'vue';
import { ApiError, countTokens, streamChatCompletion } from '../lib/api.js';
import { perFrame } from '../lib/frame.js';
import {
  dropVersion,
  fitToContext,
  lastUserIndex,
  saveVersion,
  sendableTurns,
  startNewVersion,
  toApiMessages,
} from '../lib/history.js';
import { samplingParams } from './useSettings.js';

/** What the error banner shows for an error. */
export function describeError(err) {
  if (err instanceof ApiError) {
    return { kind: err.kind, message: err.message, detail: err.detail || '', retryAfter: err.retryAfter };
  }
  return { kind: 'unknown', message: err?.message || 'Something went wrong.', detail: '', retryAfter: 0 };
}

/** The history as the api wants it: optional system prompt, then well-formed user/assistant turns. */
export function buildMessages(conversation, systemPrompt) {
  return toApiMessages(sendableTurns(conversation.messages), systemPrompt);
}

export function useChat({
  store,
  settings,
  modelInfo,
  stream = streamChatCompletion,
  count = countTokens,
  clock = () => performance.now(),
  frame = perFrame,
}) {
  const runs = reactive({}); // conversation id -> { status, controller }
  const errors = reactive({}); // conversation id -> describeError(...)
  const contexts = reactive({}); // conversation id -> { tokens, contextLength, dropped }

  const status = computed(() => runs[store.activeId.value]?.status ?? 'idle');
  const busy = computed(() => status.value !== 'idle');
  const error = computed(() => errors[store.activeId.value] ?? null);
  const context = computed(() => contexts[store.activeId.value] ?? null);

  function isBusy(id) {
    return !!runs[id];
  }

  /** Tokens of `messages`: the api's count, or null when it cannot count (then nothing is trimmed). */
  async function tokensOf(messages, signal) {
    try {
      return (await count(messages, { signal })).count;
    } catch (err) {
      if (signal.aborted) throw err;
      return null;
    }
  }

  /** Answer the user message at `userIndex`, into `reply` (a regeneration) or a new message. */
  async function run(conversation, userIndex, reply = null) {
    const id = conversation.id;
    const user = conversation.messages[userIndex];
    delete errors[id];
    const controller = new AbortController();
    const { signal } = controller;
    runs[id] = { status: 'waiting', controller };
    const fail = (err) => {
      errors[id] = describeError(err);
    };

    try {
      const model = modelInfo.model.value ?? (await modelInfo.refresh());
      if (!model) {
        user.status = 'failed';
        user.note = 'No reply';
        fail(modelInfo.error.value ?? new ApiError('unavailable', 'The chat service is not reachable right now.'));
        return;
      }

      // Fit the conversation in the context: the oldest turns go first; the message itself must fit.
      const turns = sendableTurns(conversation.messages, userIndex);
      let messages = toApiMessages(turns, settings.systemPrompt);
      conversation.contextStart = null;
      if (model.contextLength) {
        let unknown = false;
        const fit = await fitToContext(turns, settings.systemPrompt, {
          contextLength: model.contextLength,
          replyBudget: settings.maxTokens,
          count: async (candidate) => {
            const n = await tokensOf(candidate, signal);
            if (n === null) unknown = true;
            return n ?? 0;
          },
        });
        if (fit.tooLong) {
          user.status = 'failed';
          user.note = 'Not sent: too long for the model';
          fail(
            new ApiError(
              'too_long',
              `This message does not fit in the model's context: it needs ${fit.tokens} tokens, and ` +
                `${fit.limit} are left once ${settings.maxTokens} are kept for the reply ` +
                `(context ${model.contextLength}). Shorten it, or lower "Max tokens per reply" in Settings.`,
            ),
          );
          return;
        }
        if (!unknown) {
          messages = fit.messages;
          if (fit.dropped) conversation.contextStart = turns[fit.dropped].user.id;
          contexts[id] = { tokens: fit.tokens, contextLength: model.contextLength, dropped: fit.dropped };
        }
      }

      user.status = 'done';
      delete user.note;
      if (reply) startNewVersion(reply);
      else reply = store.addMessage({ role: 'assistant', content: '', status: 'streaming' }, conversation);
      const started = clock();
      let firstToken = null;
      // Tokens join the reply once per animation frame, not once per chunk: everything that follows
      // a change (rendering, the store's watcher, scrolling) then runs at most once per frame too.
      let pending = '';
      const addPending = () => {
        reply.content += pending;
        pending = '';
      };
      const scheduleText = frame(addPending);
      const flushText = () => {
        scheduleText.cancel();
        if (pending) addPending();
      };
      try {
        const { finishReason, usage } = await stream(
          { model: model.id, messages, ...samplingParams(settings, { jsonSupported: jsonSupported(model) }) },
          {
            signal,
            stallSeconds: settings.stallSeconds,
            onDelta(text) {
              if (firstToken === null) {
                firstToken = clock();
                runs[id].status = 'streaming';
              }
              pending += text;
              scheduleText();
            },
          },
        );
        flushText();
        reply.status = 'done';
        reply.truncated = finishReason === 'length';
        reply.usage = usage ?? null;
        reply.timing = { start: started, firstToken: firstToken ?? clock(), end: clock() };
        if (usage?.total_tokens) {
          contexts[id] = { ...contexts[id], tokens: usage.total_tokens, contextLength: model.contextLength };
        }
      } catch (err) {
        flushText();
        const stopped = signal.aborted && !(err instanceof ApiError);
        if (!stopped) fail(err);
        if (reply.content) {
          reply.status = stopped ? 'stopped' : 'error';
          if (err?.kind === 'stalled') reply.note = 'No answer from the server: this reply is incomplete';
        } else {
          // Nothing came back: the turn is left out of later requests until it is retried or edited.
          if (!dropVersion(reply)) store.removeMessage(conversation, reply.id);
          user.status = 'failed';
          user.note = stopped ? 'Stopped before a reply' : err?.kind === 'stalled' ? 'No answer' : 'No reply';
        }
      } finally {
        saveVersion(reply);
      }
    } catch (err) {
      // The token count was stopped or failed before anything was sent.
      user.status = 'failed';
      user.note = signal.aborted ? 'Stopped before a reply' : 'No reply';
      if (!signal.aborted) fail(err);
    } finally {
      store.touch(conversation);
      delete runs[id];
    }
  }

  function jsonSupported(model) {
    return !!model?.capabilities?.includes('response_format');
  }

  /** Send `text` as the next user message of the open chat; ignored while that chat is replying. */
  async function send(text) {
    const content = text.trim();
    if (!content || busy.value) return false;
    store.addMessage({ role: 'user', content });
    const conversation = store.active.value;
    await run(conversation, conversation.messages.length - 1);
    return true;
  }

  /** Abort the reply in progress in chat `id` (default: the open one). */
  function stop(id = store.activeId.value) {
    runs[id]?.controller.abort();
  }

  /** Try the last user turn of the open chat again, dropping a reply that failed half-way. */
  async function retry() {
    const conversation = store.active.value;
    if (!conversation || busy.value) return;
    const last = conversation.messages.at(-1);
    if (last?.role === 'assistant' && last.status === 'error') {
      if (!dropVersion(last)) store.removeMessage(conversation, last.id);
    }
    const index = lastUserIndex(conversation.messages);
    if (index < 0) return;
    const after = conversation.messages[index + 1];
    if (after) {
      // The turn has a reply already (a failed regeneration): regenerate it again.
      await run(conversation, index, after);
      return;
    }
    await run(conversation, index);
  }

  /** A new alternative for the reply `messageId` (the last reply), keeping the others. */
  async function regenerate(messageId) {
    const conversation = store.active.value;
    if (!conversation || busy.value) return;
    const index = conversation.messages.findIndex((m) => m.id === messageId);
    const reply = conversation.messages[index];
    if (reply?.role !== 'assistant' || index !== conversation.messages.length - 1) return;
    const userIndex = index - 1;
    if (conversation.messages[userIndex]?.role !== 'user') return;
    await run(conversation, userIndex, reply);
  }

  /** Replace the text of user message `messageId` and answer it again; later turns are removed. */
  async function edit(messageId, text) {
    const conversation = store.active.value;
    const content = text.trim();
    if (!conversation || busy.value || !content) return false;
    const message = conversation.messages.find((m) => m.id === messageId);
    if (message?.role !== 'user') return false;
    store.truncateAfter(conversation, messageId);
    message.content = content;
    await run(conversation, conversation.messages.length - 1);
    return true;
  }

  function dismissError() {
    delete errors[store.activeId.value];
  }

  return { status, busy, error, context, isBusy, send, stop, retry, regenerate, edit, dismissError, jsonSupported };
}
