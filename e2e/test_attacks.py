"""Hostile input against the running stack: request ids that follow (or try to forge) a request through
nginx, Express and the api, and model output full of HTML, script and huge code that the chat page
must render as inert text."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

HEX32 = re.compile(r"[0-9a-f]{32}")
REPLY = 'article[aria-label="piBLOOM"]'


# --- request ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/models", "/v1/models"], ids=["nginx-express-api", "nginx-api"])
def test_request_id_follows_the_request_to_the_api(proxy_server: str, path: str) -> None:
    # The api echoes the id it received and its header wins over the hops' own: seeing ours back
    # means every hop passed it on unchanged.
    sent = "e2e-trace-0001"
    response = httpx.get(f"{proxy_server}{path}", headers={"X-Request-ID": sent}, timeout=10)
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == [sent]

    made = httpx.get(f"{proxy_server}{path}", timeout=10).headers.get_list("x-request-id")
    assert len(made) == 1 and HEX32.fullmatch(made[0])  # nginx's $request_id, carried to the api

    # Not an id (spaces could forge fields in text logs): replaced, by nginx already.
    forged = httpx.get(f"{proxy_server}{path}", headers={"X-Request-ID": "x level=forged"}, timeout=10)
    assert HEX32.fullmatch(forged.headers["x-request-id"])


def test_request_id_on_an_answer_nginx_makes_itself(proxy_server: str) -> None:
    too_large = httpx.post(
        f"{proxy_server}/v1/chat/completions",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json", "X-Request-ID": "big-body-1"},
        timeout=30,
    )
    assert too_large.status_code == 413
    assert too_large.headers["x-request-id"] == "big-body-1"


# --- hostile model output in the page ----------------------------------------------------------

HOSTILE = [
    "Here you go:\n\n<script>window.__pwned = 'script'</script>\n\n",
    '<img src="x" onerror="window.__pwned = \'img\'">\n\n',
    "<iframe src=\"javascript:window.top.__pwned='iframe'\"></iframe>\n\n",
    "[a link](javascript:window.__pwned='link') and <a href=\"#\" onclick=\"window.__pwned='click'\">this</a>\n\n",
    "<svg><script>window.__pwned='svg'</script></svg> <style>body{display:none}</style>\n\n",
    '<form action="https://evil.example"><input name="q"></form>\n\n',
    "<scr",  # a tag split across chunks, as tokens arrive
    "ipt>alert('split')</scr",
    "ipt>\n\n",
]
CODE_LINES = 4000  # a ~200 KB code block
HUGE_CODE = "```html\n" + "".join(f'<div onclick="alert({i})">line {i}</div>\n' for i in range(CODE_LINES)) + "```\n"


def sse(model: str, pieces: list[str]) -> str:
    chunks = []
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        chunks.append({"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": model, "choices": [choice]})
    last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    chunks.append({"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": model, "choices": [last]})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_hostile_model_output_renders_as_inert_text(browser: Browser, web_server: str, api_server: str) -> None:
    model = httpx.get(f"{api_server}/v1/models", timeout=10).json()["data"][0]["id"]
    code_pieces = [HUGE_CODE[i : i + 4096] for i in range(0, len(HUGE_CODE), 4096)]
    body = sse(model, HOSTILE + code_pieces)

    def hostile_model(route: Route) -> None:
        # The real page, server and bundle; only the model's words are replaced.
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page: Page = context.new_page()
        console: list[str] = []
        dialogs: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.on("pageerror", lambda e: console.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.route("**/api/v1/chat/completions", hostile_model)
        page.goto(web_server + "/")
        expect(page.get_by_test_id("model-badge")).to_have_text(model)

        own = "<img src=x onerror=\"window.__pwned='user'\"> what is <b>HTML</b>?"
        box = page.get_by_label("Message", exact=True)
        box.fill(own)
        box.press("Enter")
        done = page.locator(f'{REPLY}[data-status="done"]')
        expect(done).to_have_count(1, timeout=60_000)

        reply = done.locator(".markdown")
        # Nothing ran: no flag set, no dialog, and no script the policy had to block.
        assert page.evaluate("window.__pwned") is None
        assert dialogs == []
        assert not [m for m in console if "Content Security Policy" in m or "Refused" in m], console
        # No active element made it into the page from the reply or the user's own text.
        dangerous = (
            "script, iframe, object, embed, form, input, style, svg, [onerror], [onclick], a[href^='javascript']"
        )
        anywhere = "script:not([src]), iframe, object, embed, [onerror], [onclick], a[href^='javascript']"
        assert page.locator(f"body {anywhere}").count() == 0
        assert reply.locator(dangerous).count() == 0
        # The model's markup is shown as text, as written.
        text = reply.inner_text()
        assert "<script>window.__pwned = 'script'</script>" in text
        assert "<scr" in text and "alert('split')" in text
        expect(page.locator('article[aria-label="You"]')).to_have_text(own)
        # The huge code block is one code element holding every line.
        code = reply.locator("pre code")
        expect(code).to_have_count(1)
        assert (code.text_content() or "").count("\n") >= CODE_LINES
        assert f"line {CODE_LINES - 1}</div>" in (code.text_content() or "")
        # The page still works: the composer takes the next message.
        box.fill("still responsive")
        expect(page.get_by_role("button", name="Send message")).to_be_enabled()
    finally:
        context.close()
