"""The web console in a real browser: headless Chromium (Debian's) driven through Selenium and
Debian's chromedriver, against `smsbot serve` with the sandbox provider on loopback.

Without the browser these tests are skipped with one line saying how to enable them; with
SMSBOT_TEST_BROWSER=required (.ci/run sets it) a missing browser is a failure. Screenshots of
the main pages go to SMSBOT_TEST_SCREENSHOTS when it names a directory (docs/console is where
the README's come from), else to a temporary directory.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.fresh import KEY_LINE, fresh_project
from tests.test_console import KEY, project

CHROMIUM = os.environ.get("SMSBOT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SMSBOT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
HOW = (
    "enable them with `apt-get install chromium chromium-driver` (selenium comes with"
    " `make install`; .ci/run installs the browser and sets SMSBOT_TEST_BROWSER=required)"
)


def _browser_problem() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


_PROBLEM = _browser_problem()
if _PROBLEM is not None:
    if os.environ.get("SMSBOT_TEST_BROWSER") == "required":
        pytest.fail(f"browser tests: {_PROBLEM} (SMSBOT_TEST_BROWSER=required); {HOW}", False)
    pytest.skip(f"browser tests skipped: {_PROBLEM}; {HOW}", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only once the browser is known to be there)
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.expected_conditions import staleness_of  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

VN = "+447700900100"
WAIT = 20.0  # seconds for anything the page shows after a server round trip
DESKTOP = (1280, 900)
PHONE_SCREEN = (390, 844)


@dataclasses.dataclass
class Server:
    """`smsbot serve` in a child process: its URLs, its project directory, its log."""

    url: str
    sandbox_url: str
    root: Path
    log: Path

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def text_bot(self, phone: str, text: str) -> None:
        """Text the bot through the sandbox, as `curl …/sandbox/inbound` does."""
        request = urllib.request.Request(
            f"{self.sandbox_url}/sandbox/inbound",
            method="POST",
            data=json.dumps({"from": phone, "to": VN, "text": text}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["status"] == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = project(tmp_path_factory.mktemp("console-server"))
    with _serve(
        root,
        SMSBOT_API_KEY=KEY,
        SMSBOT_DEFAULT_SENDER=VN,
        SMSBOT_STEP_MAX_ATTEMPTS="1",
        SMSBOT_FLOWS_DIR=str(root / "flows"),
        SMSBOT_TEMPLATES_DIR=str(root / "templates"),
    ) as running:
        yield running


@contextlib.contextmanager
def _serve(root: Path, **settings: str) -> Iterator[Server]:
    """`smsbot serve` in `root` with the sandbox provider, SQLite there and these settings."""
    port, sandbox_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}
    env.update(
        SMSBOT_DATABASE_URL=f"sqlite:///{root / 'smsbot.db'}",
        SMSBOT_PORT=str(port),
        SMSBOT_SANDBOX_PORT=str(sandbox_port),
        **settings,
    )
    log = root / "serve.log"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "smsbot", "serve"], cwd=root, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if child.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"smsbot serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield Server(url, f"http://127.0.0.1:{sandbox_port}", root, log)
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: SMSBOT_TEST_SCREENSHOTS (e.g. docs/console), else a temporary dir."""
    chosen = os.environ.get("SMSBOT_TEST_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(server: Server, browser: WebDriver) -> Iterator[WebDriver]:
    """The browser, signed in; afterwards, no page may have broken the CSP."""
    browser.set_window_size(*DESKTOP)
    browser.get(f"{server.url}/console/sign-in")
    if "/console/sign-in" in browser.current_url:
        sign_in(browser, KEY)
        # wait for the sign-in's answer (its cookie): a page opened before it lands is
        # redirected to the sign-in form, which failed a test now and then
        until(browser, lambda b: "/console/sign-in" not in b.current_url, "signed in")
    yield browser
    problems = [
        e["message"]
        for e in browser.get_log("browser")
        if "Content Security Policy" in e["message"]
    ]
    assert not problems, problems


def sign_in(browser: WebDriver, key: str) -> None:
    field = browser.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()


def until(browser: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        # htmx swaps polled parts every second: an element read mid-swap is read again.
        waiting = WebDriverWait(
            browser, WAIT, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
        )
        return waiting.until(_mid_swap_is_not_yet(check))
    except TimeoutException:
        raise AssertionError(f"gave up waiting for {what} on {browser.current_url}") from None


def _mid_swap_is_not_yet(check: Callable[[WebDriver], Any]) -> Callable[[WebDriver], Any]:
    """An element htmx replaced while Chromium read it ("Node with given id does not belong to
    the document", a WebDriverException rather than a stale reference) is read again."""

    def tolerant(browser: WebDriver) -> Any:
        try:
            return check(browser)
        except WebDriverException as exc:
            # Chromium mid-navigation: "unhandled inspector error" (seen once in CI)
            if any(m in str(exc) for m in ("does not belong to the document", "inspector error")):
                return False
            raise

    return tolerant


def main_text(browser: WebDriver) -> str:
    """The page's <main> text, read again if Chromium was mid-navigation or mid-swap."""
    text: str = until(browser, lambda b: b.find_element(By.TAG_NAME, "main").text, "the page")
    return text


def shows(text: str, where: str = "main") -> Callable[[WebDriver], bool]:
    def check(browser: WebDriver) -> bool:
        return text in browser.find_element(By.CSS_SELECTOR, where).text

    return check


def reloads_until(url: str, text: str) -> Callable[[WebDriver], bool]:
    """For pages that do not poll: load `url` again (a GET, never a form's POST) until `text`."""

    def check(browser: WebDriver) -> bool:
        browser.get(url)
        return text in browser.find_element(By.TAG_NAME, "main").text

    return check


def screenshot(browser: WebDriver, folder: Path, name: str) -> None:
    """Save the whole page, top to bottom, as `name`.png (Chromium's DevTools capture)."""
    browser.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    (folder / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def simulator(browser: WebDriver, server: Server, phone: str) -> None:
    browser.get(f"{server.url}/console/simulator?phone={quote(phone)}&number={quote(VN)}")


def send(browser: WebDriver, text: str) -> None:
    field = browser.find_element(By.ID, "text")
    field.send_keys(text)
    field.submit()


def delivered(text: str) -> Callable[[WebDriver], bool]:
    """True once the bot's message containing `text` shows the Delivered status."""
    path = (
        f"//ol[@id='thread']/li[contains(., {json.dumps(text)})]"
        "//span[contains(@class, 'status-delivered')]"
    )

    def check(browser: WebDriver) -> bool:
        return bool(browser.find_elements(By.XPATH, path))

    return check


# --- the tests, in the order a new user would go ---------------------------------------------


def test_sign_in_with_the_operator_key(server: Server, browser: WebDriver, shots: Path) -> None:
    browser.delete_all_cookies()
    browser.get(f"{server.url}/console/conversations")
    assert "/console/sign-in?next=" in browser.current_url
    screenshot(browser, shots, "sign-in")
    sign_in(browser, "not-the-key")
    until(browser, shows("not an operator key"), "the wrong-key message")
    sign_in(browser, KEY)
    until(browser, lambda b: b.current_url.endswith("/console/conversations"), "the list")
    cookie = browser.get_cookie("smsbot_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Conversations"


def test_a_new_user_signs_in_with_the_key_serve_prints(browser: WebDriver, tmp_path: Path) -> None:
    """As `make run` does: no key set, so `smsbot serve` makes one and prints it."""
    with _serve(fresh_project(tmp_path)) as running:
        printed = KEY_LINE.search(running.log.read_text())
        assert printed is not None, running.log.read_text()[-2000:]
        browser.delete_all_cookies()
        browser.get(f"{running.url}/console")
        assert "/console/sign-in" in browser.current_url
        sign_in(browser, printed[1])
        until(browser, lambda b: b.current_url.endswith("/console/conversations"), "the list")
        browser.delete_all_cookies()


def test_text_hours_in_the_simulator_and_see_the_reply(page: WebDriver, server: Server) -> None:
    simulator(page, server, "+447700900201")
    send(page, "HOURS")
    until(page, shows("We're open Monday to Friday", "#thread"), "the HOURS reply")
    until(page, delivered("We're open"), "the reply's Delivered status")


def test_an_appointment_reminder_fires_when_the_clock_moves_and_is_delivered(
    page: WebDriver, server: Server, shots: Path
) -> None:
    simulator(page, server, "+447700900202")
    Select(page.find_element(By.ID, "start-flow")).select_by_value("appointment")
    assert '"starts_at"' in page.find_element(By.ID, "start-data").get_attribute("value")
    page.find_element(By.ID, "start").click()
    until(page, shows("Hi Sam, your appointment at Riverside Clinic", "#thread"), "the question")
    send(page, "YES")
    until(page, shows("Thanks Sam, you're booked", "#thread"), "the confirmation")
    assert "Reminder: Sam" not in page.page_source
    before = page.find_element(By.ID, "bot-time").text
    page.find_element(By.ID, "advance-next").click()
    until(page, shows("Reminder: Sam", "#thread"), "the reminder")
    until(page, delivered("Reminder: Sam"), "the reminder's Delivered status")
    assert page.find_element(By.ID, "bot-time").text != before
    screenshot(page, shots, "simulator")
    page.set_window_size(*PHONE_SCREEN)
    page.refresh()
    until(page, delivered("Reminder: Sam"), "the thread on a phone-sized screen")
    screenshot(page, shots, "simulator-phone")
    page.set_window_size(*DESKTOP)

    page.get(f"{server.url}/console/conversations?phone={quote('+447700900202')}")
    page.find_element(By.LINK_TEXT, "+447700900202").click()
    until(page, shows("Reminder: Sam", "#timeline"), "the timeline")
    timers = page.find_element(By.ID, "timers").text
    assert "reminder" in timers and "fired" in timers
    reminder = page.find_element(By.XPATH, "//ol[@id='timeline']/li[contains(., 'Reminder: Sam')]")
    assert [s.text for s in reminder.find_elements(By.CSS_SELECTOR, ".statuses .badge")] == [
        "Queued",
        "Accepted",
        "Dispatched",
        "Delivered",
    ]
    assert page.find_element(By.ID, "current-state").text == "confirmed"
    # State changes sit in the timeline among the messages, in the order they happened.
    lines = [li.text for li in page.find_elements(By.CSS_SELECTOR, "#timeline > li")]
    started = _index(lines, "appointment started in waiting, on a start request")
    asked = _index(lines, "Hi Sam, your appointment at Riverside Clinic")
    moved = _index(lines, "appointment: waiting → confirmed, on a message")
    replied = _index(lines, "Phone → bot")  # YES
    assert started < asked < replied < moved < _index(lines, "Thanks Sam")
    assert moved < _index(lines, "Timer reminder fired") < _index(lines, "Reminder: Sam")
    screenshot(page, shots, "conversation")


def test_retry_a_parked_event(page: WebDriver, server: Server, shots: Path) -> None:
    broken = server.root / "flows" / "broken"
    broken.write_text("")
    simulator(page, server, "+447700900203")
    Select(page.find_element(By.ID, "start-flow")).select_by_value("flaky")
    data = page.find_element(By.ID, "start-data")
    data.clear()
    data.send_keys("{}")
    page.find_element(By.ID, "start").click()
    events = f"{server.url}/console/events"
    until(page, reloads_until(events, "flaky is broken"), "the parked event")
    screenshot(page, shots, "events")
    broken.unlink()
    row = page.find_element(By.XPATH, "//tr[contains(., 'flaky is broken')]")
    row.find_element(By.CSS_SELECTOR, "button[aria-label^='Retry event']").click()
    until(page, staleness_of(row), "the answer to Retry")  # a new page: the form's POST is done
    until(page, reloads_until(events, "No parked events"), "the parked list to empty")
    simulator(page, server, "+447700900203")
    until(page, shows("flaky started", "#thread"), "the retried start's message")


def test_screenshots_of_the_main_pages(page: WebDriver, server: Server, shots: Path) -> None:
    """A few more appointments, so the results have something to show, then every page."""
    data = {"name": "Alex", "starts_at": _in_days(10), "location": "Riverside Clinic"}
    answers = {
        "+447700900210": "YES",
        "+447700900211": "NO",
        "+447700900212": "",  # no answer yet
        "+447700900213": "Reschedule please",
    }
    for phone in answers:
        server.api("POST", "/api/flows/appointment/start", {"to": phone, "data": data})
    _wait_for(server, lambda: all(_messages(server, p) >= 1 for p in answers))
    for phone, answer in answers.items():
        if answer:
            server.text_bot(phone, answer)
    server.text_bot("+447700900214", "STOP")
    _wait_for(server, lambda: all(_messages(server, p) >= 2 for p, a in answers.items() if a))

    page.get(f"{server.url}/console/conversations")
    until(page, shows("+447700900214"), "the newest conversations")
    screenshot(page, shots, "conversations")
    page.get(f"{server.url}/console/results?flow=appointment")
    until(page, shows("conversations started"), "the results")
    assert len(page.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
    screenshot(page, shots, "results")
    page.get(f"{server.url}/console/health")
    until(page, shows("Queues"), "the health page")
    screenshot(page, shots, "health")
    _import_contacts(server)
    page.get(f"{server.url}/console/people")
    until(page, shows("+447700900214", "#opt-outs"), "the opt-out list")
    contacts = page.find_element(By.ID, "contacts").text
    assert "Sam Smith" in contacts and "visits" in contacts and "diabetes" in contacts
    screenshot(page, shots, "people")
    page.get(f"{server.url}/console/flows")
    assert len(page.find_elements(By.CSS_SELECTOR, ".diagram svg")) == 4
    screenshot(page, shots, "flows")
    page.find_element(By.LINK_TEXT, "appointment").click()
    until(page, shows("appointment/reminder.txt", "#samples"), "the rendered templates")
    screenshot(page, shots, "flow")


def test_find_contacts_by_group_and_field_with_the_keyboard(
    page: WebDriver, server: Server
) -> None:
    _import_contacts(server)
    page.get(f"{server.url}/console/people")
    active = ActionChains(page)
    for _ in range(40):  # from the top of the page, Tab until the group filter has the focus
        if page.switch_to.active_element.get_attribute("id") == "group":
            break
        active.send_keys(Keys.TAB).perform()
    assert page.switch_to.active_element.get_attribute("id") == "group"
    Select(page.find_element(By.ID, "group")).select_by_value("diabetes")
    active.send_keys(Keys.TAB).perform()  # the field filter, then its value
    Select(page.switch_to.active_element).select_by_value("visits")
    active.send_keys(Keys.TAB, "3", Keys.ENTER).perform()
    until(page, lambda b: "group=diabetes" in b.current_url, "the search")
    rows = page.find_element(By.ID, "contacts").text
    assert "Sam Smith" in rows and "Kim" not in rows
    page.get(f"{server.url}/console/people?field=height&value=2")
    until(page, shows("no custom field named 'height'", "[role=alert]"), "the field's error")


@pytest.mark.parametrize(
    "path",
    [
        "/console/conversations",
        "/console/simulator",
        "/console/people",
        "/console/results?flow=appointment",
        "/console/events",
    ],
)
def test_every_control_has_a_label(page: WebDriver, server: Server, path: str) -> None:
    page.get(f"{server.url}{path}")
    unlabelled = page.execute_script(
        """
        return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
          .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                       && !(e.tagName === 'BUTTON' && e.textContent.trim()))
          .map(e => e.outerHTML.slice(0, 120));
        """
    )
    assert unlabelled == [], unlabelled


@pytest.mark.parametrize(
    "path",
    [
        "/console/conversations",
        "/console/conversations/1",
        "/console/simulator",
        "/console/flows/appointment",
        "/console/results?flow=appointment",
        "/console/people",
        "/console/health",
    ],
)
def test_every_page_fits_a_phone_screen(page: WebDriver, server: Server, path: str) -> None:
    """Nothing but a wide table's own scroller is wider than a phone: no sideways page scroll."""
    page.set_window_size(*PHONE_SCREEN)
    try:
        page.get(f"{server.url}{path}")
        wide = page.execute_script("return document.documentElement.scrollWidth")
        assert wide <= page.execute_script("return window.innerWidth"), (path, wide)
    finally:
        page.set_window_size(*DESKTOP)


def test_sign_out_closes_every_page(page: WebDriver, server: Server) -> None:
    old = page.get_cookie("smsbot_console")
    assert old is not None
    page.get(f"{server.url}/console/health")
    page.find_element(By.ID, "sign-out").click()
    until(page, lambda b: "/console/sign-in" in b.current_url, "the sign-in page")
    pages = [
        "/console/",
        "/console/conversations",
        "/console/conversations/1",
        "/console/events",
        "/console/simulator",
        "/console/flows",
        "/console/results?flow=appointment",
        "/console/people",
        "/console/health",
    ]
    for path in pages:
        page.get(f"{server.url}{path}")
        assert "/console/sign-in" in page.current_url, path
        assert "+4477009002" not in page.page_source, path
    # The signed-out cookie, put back by hand, opens nothing either.
    page.add_cookie({"name": old["name"], "value": old["value"], "path": "/console"})
    page.get(f"{server.url}/console/health")
    assert "/console/sign-in" in page.current_url


WORKSPACES_TOML = """
[workspaces.default]
numbers = ["+447700900100"]

[workspaces.a]
provider = "sandbox"
numbers = ["+447700900200"]

[workspaces.b]
provider = "sandbox"
numbers = ["+447700900300"]
"""


def _seed_workspaces(database: Path) -> None:
    """A conversation in each of workspaces a and b, written as the pipeline stores them."""
    from sqlalchemy import create_engine

    from smsbot.store.models import conversations_t

    engine = create_engine(f"sqlite:///{database}")
    moment = dt.datetime.now(dt.UTC)
    try:
        with engine.begin() as conn:
            for workspace, number, phone in (
                ("a", "+447700900200", "+447700900201"),
                ("b", "+447700900300", "+447700900301"),
            ):
                conn.execute(
                    conversations_t.insert().values(
                        workspace=workspace, virtual_number=number, phone=phone, data={},
                        version=0, flow="appointment", state="waiting", last_activity_at=moment,
                    )
                )  # fmt: skip
    finally:
        engine.dispose()


def test_the_admin_switches_workspace_and_the_list_changes(
    browser: WebDriver, tmp_path: Path, shots: Path
) -> None:
    """Two workspaces in one `smsbot serve`: the header's selector changes what every page lists."""
    root = project(tmp_path)
    (root / "smsbot.toml").write_text(WORKSPACES_TOML)
    with _serve(
        root,
        SMSBOT_API_KEY=KEY,
        SMSBOT_DEFAULT_SENDER=VN,
        SMSBOT_FLOWS_DIR=str(root / "flows"),
        SMSBOT_TEMPLATES_DIR=str(root / "templates"),
    ) as running:
        _seed_workspaces(root / "smsbot.db")
        browser.delete_all_cookies()
        browser.get(f"{running.url}/console/conversations")
        sign_in(browser, KEY)
        until(browser, lambda b: b.current_url.endswith("/console/conversations"), "the list")
        main = main_text(browser)
        assert "+447700900201" not in main and "+447700900301" not in main  # default's: none
        chosen = Select(browser.find_element(By.ID, "workspace"))
        assert [o.text for o in chosen.options] == ["default", "a", "b"]
        assert chosen.first_selected_option.text == "default"

        chosen.select_by_value("a")
        browser.find_element(By.ID, "switch-workspace").click()
        until(browser, shows("+447700900201"), "workspace a's conversation")
        assert "+447700900301" not in main_text(browser)
        selected = Select(browser.find_element(By.ID, "workspace")).first_selected_option
        assert selected.text == "a"
        screenshot(browser, shots, "workspaces")

        Select(browser.find_element(By.ID, "workspace")).select_by_value("b")
        browser.find_element(By.ID, "switch-workspace").click()
        until(browser, shows("+447700900301"), "workspace b's conversation")
        assert "+447700900201" not in main_text(browser)

        browser.set_window_size(*PHONE_SCREEN)  # the selector fits a phone's header
        try:
            browser.get(f"{running.url}/console/conversations")
            wide = browser.execute_script("return document.documentElement.scrollWidth")
            assert wide <= browser.execute_script("return window.innerWidth"), wide
        finally:
            browser.set_window_size(*DESKTOP)
        problems = [
            e["message"]
            for e in browser.get_log("browser")
            if "Content Security Policy" in e["message"]
        ]
        assert not problems, problems
        browser.delete_all_cookies()


CONTACTS = """phone,name,groups,visits,ward
+447700900202,Sam Smith,patients;diabetes,3,Riverside B
+447700900210,Kim,patients,1,
"""


def _import_contacts(server: Server) -> None:
    """`smsbot contacts import` into the server's database, as a user would."""
    csv_file = server.root / "contacts.csv"
    if csv_file.exists():
        return
    csv_file.write_text(CONTACTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSBOT_")}
    env["SMSBOT_DATABASE_URL"] = f"sqlite:///{server.root / 'smsbot.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "smsbot", "contacts", "import", str(csv_file)],
        cwd=server.root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _index(lines: list[str], text: str) -> int:
    """The position of the first timeline line containing `text`."""
    found = [n for n, line in enumerate(lines) if text in line]
    assert found, (text, lines)
    return found[0]


def _in_days(days: int) -> str:
    """10:30 UTC `days` from now: ahead of the bot's clock, which earlier tests moved ~2 days."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return moment.replace(hour=10, minute=30, second=0, microsecond=0).isoformat()


def _messages(server: Server, phone: str) -> int:
    body = server.api("GET", f"/api/conversations?phone={quote(phone)}")
    return sum(len(c["messages"]) for c in body["conversations"])


def _wait_for(server: Server, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not get there:\n{server.log.read_text()[-2000:]}")
        time.sleep(0.1)
