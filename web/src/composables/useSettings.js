// Generation settings, kept in this browser. Ranges are the api's own (api/pibloom/protocol.py).

import { reactive, watch } from 'vue';
import { DEFAULT_STALL_SECONDS } from '../lib/api.js';

export const SETTINGS_KEY = 'pibloom.settings.v1';

export const DEFAULTS = Object.freeze({
  systemPrompt: '',
  temperature: 0.7,
  maxTokens: 512,
  topP: 1,
  topK: 0,
  repetitionPenalty: 1,
  stop: '',
  useSeed: false,
  seed: 0,
  json: false,
  stallSeconds: DEFAULT_STALL_SECONDS,
});
// [low, high, integer]; top_p and repetition_penalty are open at 0 on the api (> 0).
export const LIMITS = Object.freeze({
  temperature: [0, 2, false],
  maxTokens: [1, 4096, true],
  topP: [0.01, 1, false],
  topK: [0, 1000, true],
  repetitionPenalty: [0.1, 10, false],
  seed: [0, 2 ** 31 - 1, true],
  stallSeconds: [5, 3600, true],
});
export const MAX_STOP_SEQUENCES = 4;

/** A number from what was typed or stored, or null when it is not one (blank, text). */
function number(value) {
  if (value === '' || value === null || value === undefined || typeof value === 'boolean') return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

function clamp(value, [low, high, integer], fallback) {
  const n = number(value);
  if (n === null) return fallback;
  const clamped = Math.min(high, Math.max(low, n));
  return integer ? Math.round(clamped) : clamped;
}

/** Stop sequences from the settings text: one per line, blank lines ignored, at most four. */
export function stopList(text) {
  return String(text ?? '')
    .split('\n')
    .filter((s) => s.length > 0)
    .slice(0, MAX_STOP_SEQUENCES);
}

/**
 * Settings with every field present and in range. A field that is missing, blank or not a number
 * keeps its value in `previous` (the last valid one), so clearing a box never sets it to 0 or 1.
 */
export function normalize(raw, previous = DEFAULTS) {
  const value = raw && typeof raw === 'object' ? raw : {};
  const out = {
    systemPrompt: typeof value.systemPrompt === 'string' ? value.systemPrompt : previous.systemPrompt,
    stop: typeof value.stop === 'string' ? stopList(value.stop).join('\n') : previous.stop,
    useSeed: typeof value.useSeed === 'boolean' ? value.useSeed : previous.useSeed,
    json: typeof value.json === 'boolean' ? value.json : previous.json,
  };
  for (const [key, range] of Object.entries(LIMITS)) out[key] = clamp(value[key], range, previous[key]);
  return out;
}

/** The sampling part of a chat request, leaving out what is at its neutral value. */
export function samplingParams(settings, { jsonSupported = false } = {}) {
  return {
    temperature: settings.temperature,
    maxTokens: settings.maxTokens,
    topP: settings.topP < 1 ? settings.topP : null,
    topK: settings.topK > 0 ? settings.topK : null,
    repetitionPenalty: settings.repetitionPenalty !== 1 ? settings.repetitionPenalty : null,
    stop: stopList(settings.stop),
    seed: settings.useSeed ? settings.seed : null,
    json: jsonSupported && settings.json,
  };
}

export function useSettings({ storage = window.localStorage } = {}) {
  let stored = {};
  try {
    stored = JSON.parse(storage.getItem(SETTINGS_KEY) ?? '{}');
  } catch {
    stored = {};
  }
  const settings = reactive(normalize(stored));

  watch(settings, () => {
    try {
      storage.setItem(SETTINGS_KEY, JSON.stringify(settings));
    } catch {
      // Storage full or disabled: settings still apply to this page.
    }
  });

  // The starting values: the server's (its PIBLOOM_CHAT_* settings, from /v1/models) once known;
  // DEFAULTS only stand in before that, or for a server that does not report them.
  let defaults = { ...DEFAULTS };

  function update(values) {
    Object.assign(settings, normalize({ ...settings, ...values }, { ...settings }));
  }

  function reset() {
    Object.assign(settings, defaults);
  }

  /** Take the server's defaults; a value the user has changed from the old default is kept. */
  function adoptDefaults(server = {}) {
    const next = normalize({ ...defaults, ...server }, defaults);
    for (const key of Object.keys(server)) {
      if (!(key in LIMITS)) continue;
      if (settings[key] === defaults[key]) settings[key] = next[key];
    }
    defaults = next;
  }

  return { settings, update, reset, adoptDefaults };
}
