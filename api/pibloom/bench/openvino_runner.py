"""Runs inside the bench's OpenVINO environment (not the service's): `python openvino_runner.py SPEC.json`.

Loads the exported model into one `ContinuousBatchingPipeline` (prefix caching on), then, for every
level, keeps `concurrency` greedy requests in flight (a closed loop: a finished request is replaced at
the next step) until the level's count is served; then, when asked, the chat case: a long
conversation cold, and its next turn. Prints one JSON object on the last line of stdout. Imports
nothing from pibloom: this environment does not have it.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def _greedy(ov: Any, max_tokens: int) -> Any:
    config = ov.GenerationConfig()
    config.max_new_tokens = max_tokens
    config.do_sample = False
    if hasattr(config, "apply_chat_template"):
        config.apply_chat_template = False  # the prompts are rendered with the template already
    return config


def _level(pipe: Any, ov: Any, prompts: list[str], concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    config = _greedy(ov, max_tokens)
    issued = 0
    running: dict[int, tuple[Any, float, list[float]]] = {}
    ttfts: list[float] = []
    tokens = 0
    started = time.monotonic()
    while issued < requests or running:
        while issued < requests and len(running) < concurrency:
            handle = pipe.add_request(issued, prompts[issued % len(prompts)], config)
            running[issued] = (handle, time.monotonic(), [])
            issued += 1
        pipe.step()
        now = time.monotonic()
        for rid, (handle, start, first) in list(running.items()):
            while handle.can_read():
                for output in handle.read().values():
                    count = len(output.generated_ids)
                    if count and not first:
                        first.append(now - start)
                    tokens += count
            if handle.get_status() != ov.GenerationStatus.RUNNING:
                ttfts.extend(first)
                del running[rid]
    wall = time.monotonic() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "tokens": tokens,
        "wall_s": wall,
        "ttft_p50": _median(ttfts),
    }


def _ttft(pipe: Any, ov: Any, prompt: str) -> float:
    """Seconds to the first generated token of one request alone (one new token)."""
    started = time.monotonic()
    pipe.generate([prompt], [_greedy(ov, 1)])
    return time.monotonic() - started


def main(spec_path: str) -> dict[str, Any]:
    import openvino_genai as ov

    with open(spec_path, encoding="utf-8") as source:
        spec = json.load(source)
    scheduler = ov.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    scheduler.cache_size = 2  # GB of KV blocks: ample for 32 streams of a 135M model
    properties = {"INFERENCE_NUM_THREADS": int(spec["threads"])}
    pipe = ov.ContinuousBatchingPipeline(spec["model_dir"], scheduler, "CPU", properties)
    tokenizer = pipe.get_tokenizer()
    prompts = [_render(tokenizer, [{"role": "user", "content": p}]) for p in spec["prompts"]]
    idle_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _level(pipe, ov, ["Say hello."], 1, 1, 8)  # warm-up, unmeasured
    levels = [
        _level(pipe, ov, prompts, int(lv["concurrency"]), int(lv["requests"]), int(spec["max_tokens"]))
        for lv in spec["levels"]
    ]
    result: dict[str, Any] = {"levels": levels}
    if spec.get("chat_history"):
        if spec.get("chat_warm"):  # a long prompt of other text first: first-time kernel work is not "cold"
            _ttft(pipe, ov, _render(tokenizer, spec["chat_warm"]))
        result["cold_ttft_s"] = _ttft(pipe, ov, _render(tokenizer, spec["chat_history"]))
        result["next_turn_ttft_s"] = _ttft(pipe, ov, _render(tokenizer, spec["chat_follow_up"]))
    result["idle_rss_bytes"] = idle_kb * 1024
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["versions"] = {"openvino_genai": str(getattr(ov, "__version__", "?"))}
    return result


if __name__ == "__main__":
    try:
        outcome = main(sys.argv[1])
    except Exception as exc:  # report any failure as JSON: the bench shows it as the peer's note
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(outcome), flush=True)
