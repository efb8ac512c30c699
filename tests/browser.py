"""A small Chrome DevTools Protocol client: headless Debian ``chromium`` driven over aiohttp
websockets, for the dashboard tests. Clicks and typing go through ``Input.*`` like a user's.

Only what the tests need: one page per browser, evaluate, wait, click, type, keys,
screenshots, and the page's console errors and exceptions collected for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1280,900"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def chromium_path() -> str | None:
    return os.environ.get("SBCT_TEST_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")


class CdpError(RuntimeError):
    """A DevTools command failed, or the page threw while evaluating."""


class Page:
    """One browser tab attached over a flattened CDP session."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.errors: list[str] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                        for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            # An API answer of 4xx is logged by the browser too; the page shows those to the
            # user and the tests assert on what it shows, so only other failures count here.
            if "/v1/" not in entry.get("url", ""):
                self.errors.append(f"{entry['text']} {entry.get('url', '')}".strip())

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                            returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CdpError(d.get("exception", {}).get("description") or d.get("text"))
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll a JS expression until truthy; fail with the expression and last value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while loop.time() < deadline:
            try:
                last = await self.evaluate(expression)
            except CdpError as exc:  # e.g. the element is not there yet
                last = exc
            if last and not isinstance(last, CdpError):
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"page: {expression!r} not true within {timeout}s; last: {last!r}; "
                             f"page errors: {self.errors}")

    async def _center(self, selector: str) -> tuple[float, float]:
        sel = json.dumps(selector)
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({sel}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()")
        return float(box[0]), float(box[1])

    async def click(self, selector: str) -> None:
        """Click the element's centre with the mouse, as a user would."""
        x, y = await self._center(selector)
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)

    async def click_button(self, text: str, scope: str = "body") -> None:
        """Click the visible button whose text is exactly ``text``."""
        mark = f"btn-{next(self.browser.ids)}"
        await self.wait_for(
            f"(() => {{ const b = [...document.querySelector({json.dumps(scope)})"
            ".querySelectorAll('button')].find(b => b.textContent.trim() === "
            f"{json.dumps(text)} && b.offsetParent !== null);"
            f" if (b) b.dataset.cdp = {json.dumps(mark)}; return !!b; }})()")
        await self.click(f'[data-cdp="{mark}"]')

    async def type(self, selector: str, text: str, *, clear: bool = True) -> None:
        """Focus the field by clicking it, replace its content and type ``text``."""
        await self.click(selector)
        if clear:
            await self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
            await self.press("Delete")
        if text:
            await self.send("Input.insertText", text=text)

    async def press(self, key: str) -> None:
        codes = {"Enter": 13, "Tab": 9, "Delete": 46, "Escape": 27, " ": 32}
        down: dict[str, Any] = {"key": key, "code": "Space" if key == " " else key,
                                "windowsVirtualKeyCode": codes[key]}
        if key == "Enter":
            down["text"] = "\r"
        await self.send("Input.dispatchKeyEvent", type="keyDown", **down)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **down)

    async def select(self, selector: str, value: str) -> None:
        """Choose an option of a <select> with the keyboard's effect: value + change event."""
        await self.click(selector)
        await self.press("Escape")
        await self.evaluate(
            f"(() => {{ const s = document.querySelector({json.dumps(selector)});"
            f" s.value = {json.dumps(value)};"
            " s.dispatchEvent(new Event('change', {bubbles: true})); })()")

    async def text(self, selector: str) -> str:
        return str(await self.wait_for(
            f"document.querySelector({json.dumps(selector)})?.textContent"))

    async def screenshot(self, name: str) -> Path:
        """Save a full-page PNG under artifacts/ and return its path."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = await self.send("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": max(size["width"], 1280),
                                     "height": size["height"], "scale": 1})
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


class Browser:
    """A headless chromium process with its own throwaway profile directory."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}

    async def start(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="sbct-chromium-")
        self.proc = await asyncio.create_subprocess_exec(
            self.executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = await self.proc.stderr.readline()
                if not line:
                    raise CdpError(f"chromium exited ({await self.proc.wait()}) before "
                                   "DevTools listened")
                m = re.search(rb"DevTools listening on (ws://\S+)", line)
                url = m.group(1).decode() if m else None
        # Keep reading stderr so a chatty browser never blocks on a full pipe.
        self._drain = asyncio.create_task(self._drain_stderr())
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CdpError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
            elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                page.on_event(data["method"], data.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CdpError("the browser closed the DevTools connection"))

    async def send(self, method: str, params: dict[str, Any] | None = None, *,
                   session_id: str | None = None) -> dict[str, Any]:
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self.ws.send_str(json.dumps(msg))
        async with asyncio.timeout(30):
            return await fut

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                        deviceScaleFactor=1, mobile=False)
        return page

    async def close(self) -> None:
        try:
            await self.send("Browser.close")
        except (CdpError, ConnectionError, TimeoutError):
            self.proc.kill()
        await self.ws.close()
        await self.http.close()
        self._reader.cancel()
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._drain.cancel()
        self._profile.cleanup()
