// Generation settings, kept in this browser.

import { reactive, watch } from 'vue';

export const SETTINGS_KEY = 'pibloom.settings.v1';

export const DEFAULTS = Object.freeze({ systemPrompt: '', temperature: 0.7, maxTokens: 512 });
export const LIMITS = Object.freeze({ temperature: [0, 2], maxTokens: [1, 4096] });

function clamp(value, [low, high], fallback) {
  const n = Number(value);
  return Number.isFinite(n) ? Math.min(high, Math.max(low, n)) : fallback;
}

/** Settings with every field present and in range, whatever was stored. */
export function normalize(raw) {
  const value = raw && typeof raw === 'object' ? raw : {};
  return {
    systemPrompt: typeof value.systemPrompt === 'string' ? value.systemPrompt : DEFAULTS.systemPrompt,
    temperature: clamp(value.temperature, LIMITS.temperature, DEFAULTS.temperature),
    maxTokens: Math.round(clamp(value.maxTokens, LIMITS.maxTokens, DEFAULTS.maxTokens)),
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

  function update(values) {
    Object.assign(settings, normalize({ ...settings, ...values }));
  }

  function reset() {
    Object.assign(settings, DEFAULTS);
  }

  return { settings, update, reset };
}
