import { describe, expect, it } from 'vitest';
import { nextTick } from 'vue';
import { DEFAULTS, SETTINGS_KEY, normalize, useSettings } from '../src/composables/useSettings.js';
import { memoryStorage } from './helpers.js';

describe('useSettings', () => {
  it('starts from the defaults', () => {
    const { settings } = useSettings({ storage: memoryStorage() });
    expect({ ...settings }).toEqual(DEFAULTS);
  });

  it('keeps values in range whatever is typed or stored', () => {
    expect(normalize({ temperature: '5', maxTokens: '0', systemPrompt: 42 })).toEqual({
      ...DEFAULTS,
      systemPrompt: '',
      temperature: 2,
      maxTokens: 1,
    });
    expect(normalize({ temperature: 'warm', maxTokens: '1e9' })).toMatchObject({ temperature: 0.7, maxTokens: 4096 });
    expect(normalize(null)).toEqual(DEFAULTS);
  });

  it("starts from the server's defaults, keeping what the user changed", () => {
    const { settings, update, reset, adoptDefaults } = useSettings({ storage: memoryStorage() });
    update({ maxTokens: 100 });
    adoptDefaults({ temperature: 0.3, maxTokens: 256 });
    expect(settings.temperature).toBe(0.3); // was at the old default: follows the server
    expect(settings.maxTokens).toBe(100); // the user's own choice stays
    adoptDefaults({ temperature: 9 }); // out of range: clamped like anything typed
    expect(settings.temperature).toBe(2);
    reset();
    expect(settings.maxTokens).toBe(256);
    expect(settings.temperature).toBe(2);
  });

  it('saves changes and loads them in a new page', async () => {
    const storage = memoryStorage();
    const first = useSettings({ storage });
    first.update({ systemPrompt: 'Be brief.', temperature: '0.2', maxTokens: '128.4' });
    await nextTick();
    const { settings } = useSettings({ storage });
    expect({ ...settings }).toEqual({ ...DEFAULTS, systemPrompt: 'Be brief.', temperature: 0.2, maxTokens: 128 });
    expect(JSON.parse(storage.getItem(SETTINGS_KEY)).temperature).toBe(0.2);
  });

  it('resets to the defaults', async () => {
    const { settings, update, reset } = useSettings({ storage: memoryStorage() });
    update({ temperature: 1.5 });
    reset();
    expect({ ...settings }).toEqual(DEFAULTS);
  });
});
