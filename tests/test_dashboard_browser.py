"""The dashboard in a real headless chromium, against the real ingress, worker and database.

Screenshots land in artifacts/ (gitignored): dashboard-*.png.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from sbct_pipeline.templates import TemplateSyntaxError, compile_template, compile_text

from .browser import Browser, Page, chromium_path
from .conftest import ADMIN_TOKEN, Api, eventually, webhook


@pytest.fixture
async def page(ingress: Api) -> AsyncIterator[Page]:
    """A fresh headless chromium tab; the test fails if the page logged an error.

    It depends on ``ingress`` so the server outlives the tab (a late favicon request to a
    stopped server would log an error).
    """
    exe = chromium_path()
    if exe is None:
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium) "
                    "or set SBCT_TEST_CHROMIUM")
    browser = Browser(exe)
    await browser.start()
    try:
        p = await browser.new_page()
        yield p
        assert p.errors == [], f"the page logged errors: {p.errors}"
    finally:
        await browser.close()


async def sign_in(page: Page, ingress: Api, token: str = ADMIN_TOKEN) -> None:
    await page.goto(ingress.base + "/dashboard")
    await page.type("#main input[type=password]", token)
    await page.press("Enter")  # keyboard submit


async def test_sign_in_apps_and_integration(page: Page, ingress: Api) -> None:
    """A wrong admin token shows the API's message; then an app is created, its token and
    webhook URLs shown once, and its CleverTap integration saved with a region."""
    await sign_in(page, ingress, "wrong-token")
    alert = await page.text("[role=alert]")
    assert "Authorization: Bearer <SBCT_ADMIN_TOKEN> is required" in alert
    assert "HTTP 401" in alert

    await page.type("#main input[type=password]", ADMIN_TOKEN)
    await page.press("Enter")
    await page.wait_for("document.querySelector('h1')?.textContent === 'Apps'")
    await page.type("#main form input[type=text]", "Acme shop")
    await page.click_button("Create app")
    await page.wait_for("!!document.querySelector('#token-panel')")
    panel = await page.evaluate(
        "[...document.querySelectorAll('#token-panel input')].map(i => i.value)")
    app_id, token, single, multi = panel
    assert token.startswith("sbct_") and app_id.startswith("app_")
    assert single == ingress.base + "/clevertap/notifications/single"
    assert multi == ingress.base + "/clevertap/notifications/multi"
    # The token shown is a working token of that app.
    status, body = await ingress.call("GET", "/v1/templates", token=token)
    assert status == 200 and body == {"templates": []}
    await page.wait_for("document.querySelector('table caption')?.textContent"
                        ".startsWith('1 app')")
    await page.screenshot("dashboard-apps")

    # Rotation: a second token is shown once too, and works beside the first.
    await page.click_button("New token")
    await page.wait_for("[...document.querySelectorAll('#main .status.ok')]"
                        ".some(s => s.textContent.startsWith('Issued a new token'))")
    rotated = await page.evaluate(
        "document.querySelectorAll('#token-panel input')[1].value")
    assert rotated != token and rotated.startswith("sbct_")
    for t in (token, rotated):
        status, _ = await ingress.call("GET", "/v1/templates", token=t)
        assert status == 200

    await page.click('a[href="#integrations"]')
    await page.wait_for("document.querySelector('h1')?.textContent.startsWith('Integrations')")
    # Saving with the callback on but no endpoint shows the API's message.
    await page.click("input[role=switch]")
    await page.click_button("Save")
    assert "api_endpoint must be an http(s) base URL" in await page.text(".status.error")
    await page.type("#main form fieldset input[type=text]", "TEST-ACCOUNT")
    await page.type("#main form input[type=password]", "TEST-PASSCODE")
    await page.select("#main form select", "https://sg1.api.clevertap.com")
    assert await page.evaluate("document.querySelector('input[type=url]').value") == \
        "https://sg1.api.clevertap.com"
    await page.click_button("Save")
    assert "event callback on" in await page.text(".status.ok")
    status, integ = await ingress.call("GET", f"/v1/apps/{app_id}/integrations/clevertap",
                                       admin=True)
    assert status == 200, integ
    assert (integ["event_callback"], integ["project_id"], integ["api_endpoint"]) == \
        (True, "TEST-ACCOUNT", "https://sg1.api.clevertap.com")
    await page.screenshot("dashboard-integrations")


async def test_template_preview_builder_and_campaign(page: Page, ingress: Api,
                                                     worker: Any) -> None:
    """A template made in the editor previews live; the builder's key-values, sent as a
    webhook, deliver exactly the previewed text; the campaign then shows on its page."""
    app = await ingress.new_app()
    await sign_in(page, ingress)
    await page.wait_for("document.querySelector('h1')?.textContent === 'Apps'")
    await page.type("#app-token", app["api_token"])
    await page.press("Enter")

    await page.click('a[href="#templates"]')
    await page.click_button("New template")
    await page.type("form.editor input[type=text]", "order_shipped")
    fields = "form.editor .field"
    await page.type(f"{fields}:nth-of-type(3) input", "Hi {name}")
    await page.type(f"{fields}:nth-of-type(4) textarea", "Order {order_id} shipped {{today}}")
    await page.type(f"{fields}:nth-of-type(5) textarea", '{"url": "https://x.test/o/{order_id}"}')
    variables = await page.wait_for(
        "(() => { const v = [...document.querySelectorAll('[data-testid=variables] li')]"
        ".map(l => l.textContent); return v.length === 2 ? v : null; })()")
    assert variables == ["name", "order_id"]
    assert await page.text("[data-testid=preview-title]") == "Hi {name}"
    await page.type("input[data-var=name]", "Ana")
    await page.type("input[data-var=order_id]", "A-17")
    assert await page.text("[data-testid=preview-title]") == "Hi Ana"
    assert await page.text("[data-testid=preview-body]") == "Order A-17 shipped {today}"
    assert json.loads(await page.text("[data-testid=preview-data]")) == \
        {"url": "https://x.test/o/A-17"}
    await page.screenshot("dashboard-template-editor")

    # A syntax error shows the same message the server would give.
    await page.type(f"{fields}:nth-of-type(3) input", "Hi {name")
    shown = await page.text("[role=alert]")
    with pytest.raises(TemplateSyntaxError) as err:
        compile_text("Hi {name", "title")
    assert shown == f"Template syntax: {err.value}"
    await page.type(f"{fields}:nth-of-type(3) input", "Hi {name}")

    await page.click_button("Create template")
    assert "Saved order_shipped" in await page.text(".status.ok")
    status, tpl = await ingress.call("GET", "/v1/templates/order_shipped",
                                     token=app["api_token"])
    assert status == 200, tpl
    assert (tpl["title"], tpl["body"], tpl["variables"]) == \
        ("Hi {name}", "Order {order_id} shipped {{today}}", ["name", "order_id"])

    await page.click('a[href="#builder"]')
    await page.select("#main select", "order_shipped")
    await page.type("#main input[placeholder='My First Campaign']", "Spring sale")
    await page.type("input[data-var=name]", "{{Profile.Name}}")
    await page.type("input[data-var=order_id]", "A-17")
    assert await page.text("[data-testid=preview-title]") == "Hi {{Profile.Name}}"
    assert await page.evaluate("document.querySelector('[data-testid=preview-title] .tag')"
                               "?.textContent") == "{{Profile.Name}}"
    kv = await page.evaluate("Object.fromEntries([...document.querySelectorAll("
                             "'[data-testid=key-values] input[data-key]')]"
                             ".map(i => [i.dataset.key, i.value]))")
    assert kv == {"template_key": "order_shipped", "event_name": "Spring sale",
                  "variables": '{"name":"{{Profile.Name}}","order_id":"A-17"}'}
    await page.screenshot("dashboard-builder")

    # CleverTap fills {{Profile.Name}} per profile, then calls the webhook with these values.
    filled = {**kv, "variables": kv["variables"].replace("{{Profile.Name}}", "Ana")}
    body = webhook(target_id=1700000099, users=["user-7"])
    body["key_values"] = filled
    status, resp = await ingress.call("POST", "/clevertap/notifications/single",
                                      token=app["api_token"], json=body)
    assert status == 200 and resp["accepted"] == 1, resp

    async def feed() -> Any:
        _, f = await ingress.call("GET", "/v1/users/user-7/notifications",
                                  token=app["api_token"])
        return f["notifications"]

    (note,) = await eventually(feed)
    rendered = compile_template("k", tpl["title"], tpl["body"], tpl["data"]).render(
        orjson.loads(filled["variables"]))
    assert (note["title"], note["body"], note["data"]) == rendered
    assert note["title"] == "Hi Ana"
    status, _ = await ingress.call("POST", f"/v1/users/user-7/notifications/{note['id']}/read",
                                   token=app["api_token"])
    assert status == 200

    await page.click('a[href="#campaigns"]')
    await page.click('button[aria-label="Show campaign 1700000099"]')
    await page.wait_for("!!document.querySelector('.chart canvas')")
    tiles = await page.evaluate(
        "[...document.querySelectorAll('.tile')].map(t => t.lastChild.textContent)")
    assert tiles == ["1", "1", "0", "100.0%"]
    row = await page.evaluate("[...document.querySelectorAll('[data-testid=campaigns] tbody td')]"
                              ".map(t => t.textContent).slice(0, 5)")
    assert row == ["1700000099", "1", "1", "0", "100.0%"]
    await page.screenshot("dashboard-campaigns")


PARITY_CASES = [
    "Hi {name}", "no placeholders", "{{literal}} and {a.b-c_d}", "{x}{y}{x}", "{", "}", "a}b",
    "{}", "{ name}", "{1abc}", "{a{b}", "émoji 🎉 {n", "🎉🎉 }", "{{{v}}}", "{{}}", "",
    "{it's}", "{a\"b}", "tab\t{v}",
]


async def test_preview_renderer_matches_templates_py(page: Page, ingress: Api) -> None:
    """The page's JS renderer compiles, names variables and reports syntax errors (message
    and position) exactly as src/sbct_pipeline/templates.py does."""
    await page.goto(ingress.base + "/dashboard/")
    results = await page.evaluate(
        "(async () => { const m = await import('/dashboard/static/js/render.js');"
        f" return {json.dumps(PARITY_CASES)}.map(t => {{"
        "  try { const c = m.compileTemplate(t, '', {d: [t]});"
        "        const vars = Object.fromEntries(c.variables.map(v => [v, `<${v}>`]));"
        "        const r = m.render(c, vars); return {ok: [c.variables, r.title, r.data]}; }"
        "  catch (e) { return {err: e.message}; } }); })()")
    for text, got in zip(PARITY_CASES, results, strict=True):
        try:
            c = compile_template("k", text, "", {"d": [text]})
        except TemplateSyntaxError as exc:
            assert got == {"err": str(exc)}, text
            continue
        title, _, data = c.render({v: f"<{v}>" for v in c.variables})
        assert got == {"ok": [list(c.variables), title, data]}, text
