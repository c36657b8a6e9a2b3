"""Model loading (`loader`; Llama checkpoints without transformers' model classes: `checkpoint`), the
continuous-batching scheduler (`scheduler`), the forward passes behind one signature (`forward`,
`llama_forward`), the slot KV cache (`kv_cache`), sampling, streaming text (`detokenizer`), 4-bit
weights (`quantize`) and OpenMP setup (`openmp`).

May import: `pibloom.settings`, `pibloom.metrics`, torch and transformers. Knows nothing of HTTP or of
the serving layer above it.
"""
