"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (nothing downloads a browser). Each test saves screenshots of the pages it visits under its
tmp dir; the workflow page's is the README's (tests/ui/dashboard-workflow.png, rewritten when
BROKER_TEST_UPDATE_SCREENSHOT=1)."""

from __future__ import annotations

import html
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import waits_for, workflow
from tests.fixtures import require, wait_for
from tests.ui.test_pages import EVIL_NAME

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: seconds the browser waits for a page
PAGE_TIMEOUT = 30


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require(Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists(),
            "Debian's chromium and chromium-driver (tests/services/tools.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800",
                     "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser on one server, with the steps the tests take."""

    def __init__(self, driver, server, shots: Path):
        self.driver, self.server, self.shots = driver, server, shots
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.server.base + path)

    def login(self, user: str, password: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.delete_all_cookies()
        self.open("/ui/login")
        self.driver.find_element(By.NAME, "user").send_keys(user)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait_for(lambda: "/ui/workflows" in self.driver.current_url, what="the login")

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def box_state(self, path: str) -> str:
        """The state written in the graph box of top-level node ``path``."""
        return self.driver.execute_script(
            "var boxes = document.querySelectorAll('[data-node]');"
            "for (var i = 0; i < boxes.length; i++) {"
            "  var title = boxes[i].querySelector('title');"
            "  if (title && title.textContent === arguments[0]) { return boxes[i].querySelector('.st').textContent; }"
            "}"
            "return '';", path)

    def click_link(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.LINK_TEXT, text).click()

    def no_dialog(self) -> bool:
        from selenium.common.exceptions import NoAlertPresentException

        try:
            self.driver.switch_to.alert
        except NoAlertPresentException:
            return True
        return False


@pytest.fixture
def page(browser, server, tmp_path) -> Page:
    p = Page(browser, server, tmp_path / "screenshots")
    p.login("alice", "alice-pw")
    return p


def submit(server, body: str, name: str = "test") -> str:
    return server.core("alice").submit({"workflowContent": workflow(body, name)}).globalId


def test_log_in_and_see_the_list_follow_a_workflow_to_its_end(page, tmp_path):
    gate = tmp_path / "gate"
    gid = submit(page.server, f'<node id="a">{waits_for(gate)}</node>', "listed")
    page.open("/ui/workflows")
    page.driver.execute_script("window.notReloaded = true;")
    assert gid in page.driver.page_source
    assert "listed" in page.text("#workflows")
    row = f"#workflows tr[data-gid='{gid}'] .wf-state"
    wait_for(lambda: page.text(row) == "running", what="the row shown running")
    page.shot("workflows")
    gate.touch()
    wait_for(lambda: page.text(row) == "succeeded", what="the row shown succeeded")
    assert page.driver.execute_script("return window.notReloaded === true;")


def test_watch_a_node_turn_running_then_succeeded_without_reloading(page, tmp_path):
    gate_left, gate_join = tmp_path / "left", tmp_path / "join"
    gid = submit(page.server, f"""
        <node id="split"><payload type="sh">true</payload></node>
        <node id="left"><dependsOn node="split"/>{waits_for(gate_left)}</node>
        <node id="right"><dependsOn node="split"/><payload type="sh">true</payload></node>
        <node id="join"><dependsOn node="left"/><dependsOn node="right"/>{waits_for(gate_join)}</node>
    """, "diamond")
    page.open(f"/ui/workflows/{gid}")
    page.driver.execute_script("window.notReloaded = true;")
    wait_for(lambda: page.box_state("left") == "running", what="left shown running")
    assert page.box_state("join") == "waiting"
    gate_left.touch()
    wait_for(lambda: page.box_state("join") == "running", what="join shown running")
    assert page.box_state("left") == "succeeded"
    page.shot("workflow-running")
    if os.environ.get("BROKER_TEST_UPDATE_SCREENSHOT") == "1":
        page.driver.set_window_size(1000, 1000)  # the attributes and the whole diamond
        shutil.copy(page.shot("workflow"), Path(__file__).with_name("dashboard-workflow.png"))
        page.driver.set_window_size(1100, 800)
    gate_join.touch()
    wait_for(lambda: page.box_state("join") == "succeeded", what="join shown succeeded")
    wait_for(lambda: "succeeded" in page.text("#wf-state"), what="the workflow shown succeeded")
    assert page.driver.execute_script("return window.notReloaded === true;")  # the same page all along


def test_cancel_and_restart_a_node(page, tmp_path):
    from selenium.webdriver.common.by import By

    gate = tmp_path / "gate"
    gid = submit(page.server, f'<node id="slow">{waits_for(gate)}</node>', "cancel-me")
    page.open(f"/ui/workflows/{gid}")
    wait_for(lambda: page.box_state("slow") == "running", what="slow running")
    page.driver.find_element(By.CSS_SELECTOR, "[data-node]").click()
    wait_for(lambda: "running" in page.text("#node-state"), what="the node page")
    page.shot("node")
    page.click_link("Cancel node")
    page.shot("confirm")
    page.driver.find_element(By.ID, "confirm").click()
    wait_for(lambda: "cancelled" in page.text("#node-state"), what="slow shown cancelled")
    page.click_link("Restart node")
    page.driver.find_element(By.ID, "confirm").click()
    wait_for(lambda: "running" in page.text("#node-state"), what="slow running again")
    gate.touch()
    wait_for(lambda: "succeeded" in page.text("#node-state"), what="slow shown succeeded")
    assert page.server.core().getStatusInfoForId(gid).state == "succeeded"


def test_follow_events(page, tmp_path):
    gate = tmp_path / "gate"
    gid = submit(page.server, f'<node id="slow">{waits_for(gate)}</node>', "events")
    page.open(f"/ui/workflows/{gid}/events")
    page.driver.execute_script("window.notReloaded = true;")
    wait_for(lambda: "running" in page.text("#events tbody"), what="the running event")
    gate.touch()
    wait_for(lambda: "succeeded" in page.text("#events tbody"), what="the succeeded event followed live")
    assert page.driver.execute_script("return window.notReloaded === true;")
    page.shot("events")


def test_submit_an_invalid_description_and_see_its_problems(page):
    from selenium.webdriver.common.by import By

    page.open("/ui/submit")
    bad = workflow('<node id="a"><dependsOn node="nowhere"/><payload type="sh">true</payload></node>')
    area = page.driver.find_element(By.NAME, "content")
    page.driver.execute_script("arguments[0].value = arguments[1];", area, bad)
    page.driver.find_element(By.CSS_SELECTOR, "form[enctype] button").click()
    wait_for(lambda: "nowhere" in page.text("section.problems"), what="the problems")
    assert "nowhere" in page.text("ol.source li.bad")
    page.shot("submit-problems")


def test_bob_opening_alices_workflow_url_gets_404(page):
    gid = submit(page.server, '<node id="a"><payload type="sh">true</payload></node>', "private")
    page.login("bob", "bob-pw")
    page.open(f"/ui/workflows/{gid}")
    assert "404" in page.driver.title
    assert "private" not in page.driver.page_source
    page.shot("not-found")


def test_hostile_names_and_outputs_render_as_text_without_dialog_or_request(page):
    attacker = socket.create_server(("127.0.0.3", 0))
    port = attacker.getsockname()[1]
    hits: list[bytes] = []
    attacker.settimeout(0.2)

    def listen() -> None:
        while not stop.is_set():
            try:
                conn, _ = attacker.accept()
            except OSError:
                continue
            hits.append(conn.recv(1024))
            conn.close()

    stop = threading.Event()
    thread = threading.Thread(target=listen)
    thread.start()
    try:
        evil_output = (f"<script>alert(2)</script><img src=http://127.0.0.3:{port}/x onerror=alert(3)>"
                       f"<script src=http://127.0.0.3:{port}/s.js></script>")
        # a JSON string in the report line; the payload text is XML-escaped in the description
        report = html.escape(f"echo '@broker output x=\"{evil_output}\"'", quote=False)
        gid = submit(page.server, f'<node id="out"><payload type="sh">{report}</payload><output name="x"/></node>',
                     html.escape(EVIL_NAME))
        wait_for(lambda: page.server.core().getStatusInfoForId(gid).state in ("succeeded", "failed"),
                 what="the hostile workflow")
        page.open("/ui/workflows")
        assert EVIL_NAME in page.text("#workflows")  # shown as text
        page.open(f"/ui/workflows/{gid}")
        assert EVIL_NAME in page.text("h1")
        page.shot("hostile-workflow")
        from selenium.webdriver.common.by import By

        page.driver.find_element(By.CSS_SELECTOR, "[data-node]").click()
        wait_for(lambda: "Outputs" in page.driver.page_source, what="the node page")
        page.shot("hostile-node")
        assert "<script>alert(2)</script>" in page.text("dl.outputs")
        assert page.driver.execute_script("return document.querySelectorAll('main img, main script').length") == 0
        assert page.no_dialog()
    finally:
        stop.set()
        thread.join()
        attacker.close()
    assert hits == []  # the browser never asked the attacker's host for anything


def tab_through(page: Page, limit: int = 60) -> list[str]:
    """The labels of what TAB reaches on the current page, in order, once round."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    reached: list[str] = []
    for _ in range(limit):
        ActionChains(page.driver).send_keys(Keys.TAB).perform()  # the key, not typed into a file input
        label = page.driver.execute_script(
            "var e = document.activeElement; return (e.getAttribute('aria-label') || e.getAttribute('name') || "
            "e.textContent || '').trim();")
        if reached and label == reached[0]:
            break
        reached.append(label)
    return reached


def test_keyboard_only_navigation_reaches_every_action(page, tmp_path):
    from selenium.webdriver.common.keys import Keys

    gid = submit(page.server, f'<node id="a">{waits_for(tmp_path / "never", 5)}</node>', "keyboard")
    page.open(f"/ui/workflows/{gid}")
    reached = tab_through(page)
    for action in ("Workflows", "Submit", "Log out", "Cancel workflow", "Restart workflow", "Events", "Download"):
        assert action in reached, reached
    box = next(label for label in reached if label.startswith("a: "))  # the graph's boxes too
    while page.driver.execute_script("return document.activeElement.getAttribute('aria-label')") != box:
        page.driver.switch_to.active_element.send_keys(Keys.TAB)
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)  # a box opens its node's page
    wait_for(lambda: "/ui/nodes/" in page.driver.current_url, what="the node page by keyboard")
    for action in ("Cancel node", "Restart node", "Workflow keyboard"):
        assert action in tab_through(page), action
    page.open("/ui/submit")
    assert {"file", "content", "Submit"} <= set(tab_through(page))
    # and an action goes through with the keyboard alone
    page.open(f"/ui/confirm?action=cancel&target={gid}&back=/ui/workflows/{gid}")
    page.driver.switch_to.active_element.send_keys(Keys.TAB)
    for _ in range(10):
        if page.driver.execute_script("return document.activeElement.id") == "confirm":
            break
        page.driver.switch_to.active_element.send_keys(Keys.TAB)
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)
    # the page it leads back to follows the cancel to its end, though drawn while the kill was committed
    wait_for(lambda: "cancelled" in page.text("#wf-state"), what="the workflow cancelled by keyboard")


def test_an_action_whose_csrf_token_was_removed_is_refused(page, tmp_path):
    from selenium.webdriver.common.by import By

    gid = submit(page.server, f'<node id="a">{waits_for(tmp_path / "go")}</node>', "forged")
    page.open(f"/ui/confirm?action=cancel&target={gid}&back=/ui/workflows/{gid}")
    page.driver.execute_script("document.querySelector('form[action=\"/ui/act\"] input[name=csrf]').remove();")
    page.driver.find_element(By.ID, "confirm").click()
    wait_for(lambda: "403" in page.driver.title, what="the refusal")
    assert "security token" in page.text("main")
    page.shot("csrf-refused")
    assert page.server.core().getStatusInfoForId(gid).state in ("accepted", "running")
    (tmp_path / "go").touch()


def test_the_login_and_admin_pages(page, browser):
    page.driver.delete_all_cookies()
    page.open("/ui/workflows")
    assert "/ui/login" in page.driver.current_url
    page.shot("login")
    page.login("root", "root-pw")
    page.open("/ui/admin")
    assert "localhost" in page.text("main") and "Outbox backlog" in page.text("main")
    assert "alice" in page.text("main") and "bob" in page.text("main")
    page.shot("admin")
