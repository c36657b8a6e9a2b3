"""The chat page in headless Chromium, served by Express (`web_server`) in front of the real api."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from prometheus_client.parser import text_string_to_metric_families

# A generation on the embedded model on a small CPU: generous, but bounded.
REPLY_TIMEOUT_MS = 120_000
REPLY = 'article[aria-label="piBLOOM"]'
CANCELLED = {"finished_reason": "cancelled"}

# Records the text of the newest reply at every DOM change, so the test sees each streamed state.
RECORD_REPLY_STATES = """() => {
    window.__replyStates = [];
    new MutationObserver(() => {
        const replies = document.querySelectorAll('article[aria-label="piBLOOM"] .markdown');
        const text = replies.length ? replies[replies.length - 1].textContent : '';
        const states = window.__replyStates;
        if (text && states[states.length - 1] !== text) states.push(text);
    }).observe(document.body, { childList: true, subtree: true, characterData: true });
}"""


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile: empty localStorage, no conversations."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context
    context.close()


@pytest.fixture(scope="module")
def model(api_server: str) -> dict:
    return dict(httpx.get(f"{api_server}/v1/models", timeout=10).json()["data"][0])


def open_chat(context: BrowserContext, web_server: str, model: dict) -> tuple[Page, list[str]]:
    """Open the page and wait until it shows the served model; returns the page and its console errors."""
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(web_server + "/")
    expect(page.get_by_test_id("model-badge")).to_have_text(model["id"])
    return page, errors


def set_max_tokens(page: Page, value: int) -> None:
    page.get_by_role("button", name="Settings", exact=True).click()
    dialog = page.get_by_role("dialog", name="Settings")
    field = dialog.get_by_label("Max tokens per reply")
    field.fill(str(value))
    field.press("Tab")  # leaving the field commits it (the change event)
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def metric(api_server: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample from the api's Prometheus metrics whose labels include `labels` (0 when none yet)."""
    text = httpx.get(f"{api_server}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def test_a_message_gets_a_streamed_reply(context: BrowserContext, web_server: str, model: dict) -> None:
    page, errors = open_chat(context, web_server, model)
    # The settings panel shows the model and its context size, from the api.
    page.get_by_role("button", name="Settings", exact=True).click()
    expect(page.get_by_test_id("model-name")).to_have_text(model["id"])
    expect(page.get_by_test_id("model-context")).to_have_text(f"{model['max_model_len']:,} tokens")
    page.keyboard.press("Escape")
    set_max_tokens(page, 32)

    page.evaluate(RECORD_REPLY_STATES)
    with page.expect_request("**/api/v1/chat/completions") as sent:
        send(page, "Write three sentences about the sea.")
    body = sent.value.post_data_json
    assert body["model"] == model["id"]
    assert body["stream"] is True
    assert body["max_tokens"] == 32
    assert body["messages"] == [{"role": "user", "content": "Write three sentences about the sea."}]

    # Busy while it streams: Stop replaces Send.
    expect(page.get_by_role("button", name="Stop generating")).to_be_visible()
    done = page.locator(f'{REPLY}[data-status="done"]')
    expect(done).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Send message")).to_be_visible()

    final = done.locator(".markdown").text_content() or ""
    states: list[str] = page.evaluate("window.__replyStates")
    assert final.strip()
    # Tokens arrived over time: the page showed at least two partial replies before the whole one.
    partial = [s for s in states if s != final]
    assert len(partial) >= 2, states
    assert len(partial[0]) < len(final), states
    # The bundle runs under the server's Content-Security-Policy without violations.
    assert errors == []


def test_stop_aborts_a_long_reply(context: BrowserContext, web_server: str, api_server: str, model: dict) -> None:
    page, _ = open_chat(context, web_server, model)
    cancelled_before = metric(api_server, "pibloom_request_success_total", CANCELLED)
    failed: list[str] = []
    page.on(
        "requestfailed",
        lambda r: failed.append(r.failure or "") if r.url.endswith("/api/v1/chat/completions") else None,
    )

    send(page, "Write a very long story about a dragon who learns to bake bread, in many chapters.")
    streaming = page.locator(f'{REPLY}[data-status="streaming"] .markdown')
    expect(streaming).to_have_text(re.compile(r"\S{3}"), timeout=REPLY_TIMEOUT_MS)
    page.get_by_role("button", name="Stop generating").click()

    # The UI is idle again and keeps what had arrived, marked as stopped.
    expect(page.get_by_role("button", name="Send message")).to_be_visible()
    stopped = page.locator(f'{REPLY}[data-status="stopped"]')
    expect(stopped).to_have_count(1)
    expect(stopped.locator(".note")).to_have_text("Stopped")
    assert (stopped.locator(".markdown").text_content() or "").strip()

    # The browser aborted the request...
    deadline = time.monotonic() + 10
    while not failed and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert failed and "ABORTED" in failed[0].upper(), failed
    # ...and the api noticed and cancelled the generation instead of finishing the story.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if metric(api_server, "pibloom_request_success_total", CANCELLED) > cancelled_before:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the api did not cancel the generation after Stop")


def test_conversation_is_kept_across_a_reload(context: BrowserContext, web_server: str, model: dict) -> None:
    page, _ = open_chat(context, web_server, model)
    set_max_tokens(page, 24)
    send(page, "Name a colour of the rainbow.")
    done = page.locator(f'{REPLY}[data-status="done"]')
    expect(done).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    reply = done.locator(".markdown").inner_text()

    page.reload()
    expect(page.get_by_test_id("model-badge")).to_have_text(model["id"])
    entry = page.get_by_role("navigation", name="Conversations").get_by_role(
        "button", name="Name a colour of the rainbow.", exact=True
    )
    expect(entry).to_be_visible()
    entry.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Name a colour of the rainbow.")
    expect(page.locator('article[aria-label="You"]')).to_have_text("Name a colour of the rainbow.")
    expect(page.locator(f"{REPLY} .markdown")).to_have_text(reply)

    # Deleting it removes it for good.
    page.get_by_role("button", name="Delete conversation: Name a colour of the rainbow.").click()
    expect(entry).to_have_count(0)
    page.reload()
    expect(page.get_by_test_id("model-badge")).to_have_text(model["id"])
    expect(page.get_by_text("Your conversations will appear here.")).to_be_visible()
