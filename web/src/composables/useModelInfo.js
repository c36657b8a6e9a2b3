// The served model's name and context size, from /v1/models.

import { ref } from 'vue';
import { fetchModel } from '../lib/api.js';

export function useModelInfo() {
  const model = ref(null);
  const error = ref(null);
  const loading = ref(false);

  async function refresh() {
    loading.value = true;
    try {
      model.value = await fetchModel();
      error.value = null;
    } catch (err) {
      error.value = err;
    } finally {
      loading.value = false;
    }
    return model.value;
  }

  return { model, error, loading, refresh };
}
