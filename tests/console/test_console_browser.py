"""The console in a real browser (Debian's Chromium, driven by Selenium) against a real master, worker and FFmpeg.

One browser and one cluster for the module; the tests run in order and share the signed-in session, like an
operator would: log in, upload, watch, download, pause a worker, cancel and retry, log out. Screenshots of every
page go to ``test-artifacts/console/`` (``CONVERTER_TEST_ARTIFACTS`` to change); with ``CONVERTER_DOCS_SCREENSHOTS=1``
the queue with a running job is also saved as docs/images/console-queue.png.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.fixtures import Process, free_port, make_clip, wait_for, write_yaml

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CONVERTER_TEST_ARTIFACTS", REPO / "test-artifacts")) / "console"
ADMIN = "console-admin-token-0123456789"
WORKER = "console-worker-token-0123456789"
XSS = "<img src=x onerror=alert(1)>"

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the test extra is not installed: the skip below says so
    webdriver = None

pytestmark = [
    pytest.mark.integration,
    # one browser and one farm for the module, its tests in order: `make test` runs them after the parallel rest
    # (xdist 3.8's loadgroup did not keep an xdist_group on one worker under pytest 9)
    pytest.mark.serial,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="no /usr/bin/chromium or /usr/bin/chromedriver (apt packages chromium, chromium-driver;"
                              " `make setup` installs them)"),
    pytest.mark.skipif(webdriver is None, reason="selenium is not installed (pip install -e '.[test]')"),
]


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A master process with tokens and one worker process."""
    tmp = tmp_path_factory.mktemp("console")
    for name, token in (("admin-token", ADMIN), ("worker-token", WORKER)):
        (tmp / name).write_text(token)
        (tmp / name).chmod(0o600)
    port = free_port()
    config = write_yaml(tmp / "master.yaml", {
        "server": {"host": "127.0.0.1", "port": port},
        "storage": {"root": str(tmp / "storage")},
        "database": {"path": str(tmp / "master.db")},
        "jobs": {"lease_seconds": 5, "retry_delay": 0, "max_claim_wait": 2},
        "auth": {"admin_token_file": str(tmp / "admin-token"), "worker_token_file": str(tmp / "worker-token")},
    })
    master = Process("converter-master", config, tmp / "master.log")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url), what="master to listen")
    worker = Process("converter-worker", write_yaml(tmp / "worker.yaml", {
        "master": {"url": url, "token_file": str(tmp / "worker-token")},
        "worker": {"id": "w1", "claim_wait": 1, "heartbeat_interval": 0.5, "metrics_port": 0},
        "storage": {"cache_path": str(tmp / "cache")},
        "ffmpeg": {"timeout": 120},
    }), tmp / "worker.log")
    farm = type("Farm", (), {})()
    farm.url, farm.tmp, farm.root = url, tmp, tmp / "storage"
    farm.master = master

    def restart_master() -> None:
        farm.master.stop()
        farm.master = Process("converter-master", config, tmp / "master.log", append=True)
        wait_for(lambda: _answers(url), what="master to listen again")
    farm.restart_master = restart_master
    farm.api = lambda method, path, extra=None, **kw: requests.request(
        method, url + path, timeout=10, headers={"Authorization": f"Bearer {ADMIN}", **(extra or {})}, **kw)
    wait_for(lambda: farm.api("GET", "/api/workers").json()["workers"], timeout=60, what="worker to register")
    yield farm
    worker.stop()
    farm.master.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).ok
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--disable-gpu"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    driver.downloads = downloads
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # long enough to be seen running: 8 s converted in 1.7 s on a quiet 2-core machine, too quick to see the
    # progress bar move twice; 30 s takes about 6 s
    return make_clip(tmp_path_factory.mktemp("clip") / "holiday.mp4", seconds=30.0, size="1920x1080")


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait(driver, seconds: float = 20):
    # a live update replaces the page's live part, so an element found a moment ago may be gone: look again
    return WebDriverWait(driver, seconds, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])


def click(driver, selector: str) -> None:
    def clicked(d) -> bool:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True
    wait(driver).until(clicked)


def accept_confirm(driver) -> None:
    wait(driver, 5).until(EC.alert_is_present()).accept()


def row_status(driver, job_id: str) -> str | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    return rows[0].get_attribute("data-status") if rows else None


def test_a_logged_out_browser_is_sent_to_the_login_form(farm, browser):
    browser.get(f"{farm.url}/")
    assert "/console/login?next=" in browser.current_url
    shot(browser, "login")
    browser.find_element(By.ID, "token").send_keys("not-the-token-at-all")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    # the form posts and the answer is a new page: the alert is on that page, once it has loaded
    wait(browser).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "[role=alert]"), "not the admin token"))


def test_log_in(farm, browser):
    browser.get(f"{farm.url}/console/queue")
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait(browser).until(EC.url_to_be(f"{farm.url}/console/queue"))
    cookie = browser.get_cookie("converter_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "live-state"), "live"))


def test_submit_by_upload_then_watch_it_convert(farm, browser, clip):
    browser.get(f"{farm.url}/console/submit")
    browser.find_element(By.ID, "upload-file").send_keys(str(clip))
    browser.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
    link = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#upload-text a")))
    assert browser.find_element(By.ID, "upload-progress").get_attribute("value") == "100"
    farm.job_id = link.text
    shot(browser, "submit")
    assert farm.api("GET", f"/api/jobs/{farm.job_id}").json()["source_sha256"] == _sha256(clip)

    browser.get(f"{farm.url}/console/queue")
    wait(browser).until(lambda d: row_status(d, farm.job_id) == "processing")
    seen = set()

    def moved(driver) -> bool:
        bars = driver.find_elements(By.CSS_SELECTOR, f'tr[data-job="{farm.job_id}"] progress')
        if bars:
            seen.add(float(bars[0].get_attribute("value")))
        if row_status(driver, farm.job_id) == "completed":
            raise AssertionError(f"the job completed before its progress was seen to move (seen: {sorted(seen)})")
        return len(seen - {0.0}) >= 2
    wait(browser, 60).until(moved)
    assert browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{farm.job_id}"] .pct').text.endswith("%")
    shot(browser, "queue-running")
    if os.environ.get("CONVERTER_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(ARTIFACTS / "queue-running.png", REPO / "docs" / "images" / "console-queue.png")
    wait(browser, 90).until(lambda d: row_status(d, farm.job_id) == "completed")  # live: no reload
    assert len(browser.find_elements(By.CSS_SELECTOR, "header nav")) == 1  # the live part replaced, not nested
    browser.set_window_size(390, 844)  # a phone
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(browser, "queue-phone")
    browser.set_window_size(1280, 900)


def test_an_upload_cut_short_resumes_where_the_master_stopped(farm, browser, clip, tmp_path):
    """A tab closed mid-upload: the master holds the first half; choosing the same file again sends the rest."""
    source = shutil.copyfile(clip, tmp_path / "resumed.mp4")
    data = source.read_bytes()
    half = len(data) // 2
    created = farm.api("POST", "/api/uploads", extra={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
        "Upload-Metadata": f"profile {_b64('h264-720p')},filename {_b64(source.name)}"})
    assert created.status_code == 201, created.text
    location, job_id = created.headers["Location"], created.headers["Converter-Job-Id"]
    patched = farm.api("PATCH", location, data=data[:half], extra={
        "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert patched.status_code == 204

    browser.get(f"{farm.url}/console/submit")
    browser.find_element(By.ID, "upload-file").send_keys(str(source))
    browser.execute_script(  # what the page had saved before the tab was closed
        "const file = document.getElementById('upload-file').files[0];"
        "const key = 'converter-tus:' + JSON.stringify([file.name, file.size, file.lastModified,"
        " {profile: 'h264-720p', output_path: '', priority: ''}]);"
        "localStorage.setItem(key, JSON.stringify({url: arguments[0], job: arguments[1]}));", location, job_id)
    browser.find_element(By.ID, "upload-profile").send_keys("h264-720p")
    click(browser, "#upload-form button[type=submit]")
    link = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#upload-text a")))
    assert link.text == job_id  # the same upload went on: a new one would have made a new job
    assert farm.api("GET", f"/api/jobs/{job_id}").json()["source_sha256"] == _sha256(source)
    assert not browser.execute_script("return Object.keys(localStorage).length")


def test_the_job_page_and_its_download(farm, browser):
    job = farm.api("GET", f"/api/jobs/{farm.job_id}").json()
    browser.get(f"{farm.url}/console/jobs/{farm.job_id}")
    page = wait(browser).until(lambda d: d.find_element(By.ID, "main").text)
    assert job["output_sha256"] in page and job["source_sha256"] in page and "w1" in page
    created = browser.find_element(By.CSS_SELECTOR, "time").text
    assert created and "T" not in created  # shown in the browser's own zone, not as the ISO string
    shot(browser, "job")
    click(browser, "a.button[download]")
    def downloaded() -> list[Path]:
        # Chrome reserves the name with an empty file while it writes a .crdownload, and may write to a hidden
        # .org.chromium.Chromium.* file it renames at the end: done once only the final, full file is there
        files = list(browser.downloads.iterdir())
        done = [f for f in files if not f.name.endswith(".crdownload") and not f.name.startswith(".")
                and f.stat().st_size == job["output_size"]]
        return done if len(done) == len(files) else []
    output = wait_for(downloaded, timeout=30, what="the download")[0]
    assert _sha256(output) == job["output_sha256"]
    assert output.read_bytes() == (farm.root / job["output_path"]).read_bytes()


def test_pause_a_worker_cancel_and_retry_a_job_named_like_markup(farm, browser, clip):
    browser.get(f"{farm.url}/console/workers")
    click(browser, 'section[data-worker="w1"] button[data-post$="/pause"]')
    accept_confirm(browser)
    wait(browser).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, 'section[data-worker="w1"] button[data-post$="/resume"]')))
    assert farm.api("GET", "/api/workers").json()["workers"][0]["paused"]
    shot(browser, "workers")

    (farm.root / "in").mkdir(exist_ok=True)
    shutil.copyfile(clip, farm.root / "in" / f"{XSS}.mkv")
    browser.get(f"{farm.url}/console/submit")
    browser.find_element(By.ID, "stored-source").send_keys(f"in/{XSS}.mkv")
    browser.find_element(By.ID, "stored-output").send_keys("out/markup.mp4")
    browser.find_element(By.CSS_SELECTOR, "#stored-form button[type=submit]").click()
    job_id = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#stored-status a"))).text

    browser.get(f"{farm.url}/console/queue?q={job_id}")
    name = wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] .name').text)
    assert f"{XSS}.mkv" in name  # the markup is text
    assert not browser.find_elements(By.CSS_SELECTOR, "#main img")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    shot(browser, "queue")

    cancel = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] button[data-post$="/cancel"]')
    for _ in range(40):  # the keyboard alone reaches the button and presses it
        if browser.switch_to.active_element == cancel:
            break
        ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element == cancel
    cancel.send_keys(Keys.ENTER)
    accept_confirm(browser)
    wait(browser).until(lambda d: row_status(d, job_id) == "cancelled")
    click(browser, f'tr[data-job="{job_id}"] button[data-post$="/retry"]')
    wait(browser).until(lambda d: row_status(d, job_id) == "pending")

    browser.get(f"{farm.url}/console/workers")
    click(browser, 'section[data-worker="w1"] button[data-post$="/resume"]')
    wait(browser).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, 'section[data-worker="w1"] button[data-post$="/pause"]')))
    browser.get(f"{farm.url}/console/jobs/{job_id}")  # the resumed worker takes it
    wait(browser, 90).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, '.job[data-status="processing"], .job[data-status="completed"]')))


def test_overview(farm, browser):
    browser.get(f"{farm.url}/console/")

    def counts_agree(driver) -> bool:  # the live counts follow the queue (a job may finish meanwhile)
        counts = farm.api("GET", "/api/queue").json()["jobs"]
        return all(driver.find_element(By.CSS_SELECTOR, f'[data-count="{status}"]').text == str(count)
                   for status, count in counts.items())
    wait(browser, 30).until(counts_agree)
    assert farm.api("GET", "/api/queue").json()["jobs"]["completed"] >= 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")) >= 24
    shot(browser, "overview")


def test_live_updates_come_back_after_the_master_restarts(farm, browser):
    browser.get(f"{farm.url}/console/queue")
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "live-state"), "live"))
    farm.master.stop()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "live-state"), "reconnecting"))
    farm.restart_master()
    wait(browser, 40).until(EC.text_to_be_present_in_element((By.ID, "live-state"), "live"))
    assert "/console/queue" in browser.current_url  # the session outlived the restart


def test_a_change_without_the_xsrf_token_is_refused(farm, browser):
    browser.get(f"{farm.url}/console/queue")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/api/jobs/{farm.job_id}/retry', {{method: 'POST'}}).then((r) => done(r.status));")
    assert status == 403
    assert farm.api("GET", f"/api/jobs/{farm.job_id}").json()["status"] == "completed"


def test_log_out(farm, browser):
    browser.get(f"{farm.url}/console/")
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait(browser).until(EC.url_contains("/console/login"))
    browser.get(f"{farm.url}/console/workers")
    assert "/console/login?next=" in browser.current_url


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
