"""Drives hookq's web console in headless Chromium (run by tests/it/console.rs).

    .venv/bin/python tests/browser/console.py BASE_URL TOKEN SCREENSHOT_DIR [--api-off URL]

BASE_URL is a worker's admin address with an admin token and exactly two
dead letters waiting. The script signs in with a wrong token (refused), then
with TOKEN; reads the overview once its throughput is measured; opens the
endpoints, the failing endpoint's page and its dead letters; pages through
the DLQ one entry a page; selects the newer entry and purges it, confirmed;
opens the other entry; asks to replay it and cancels (the entry
stays), asks again and confirms; and sees the list say "Replayed 1 entry."
with the queue empty. With --api-off, it also loads the console of a worker
without a token and sees the "API is off" page. Screenshots go to
SCREENSHOT_DIR (overview.png, dlq.png, entry.png, confirm.png, replayed.png).

The last line on stdout is JSON with what the page showed, for the Rust test
to check against the queue and the receiver. Any failure exits non-zero with
the page's text and the browser's console log.
"""

import argparse
import json
import os
import sys
import traceback

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("HOOKQ_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("HOOKQ_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 20


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the suite runs as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-prefers-reduced-motion",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class Page:
    def __init__(self, driver, shots):
        self.d = driver
        self.shots = shots
        self.wait = WebDriverWait(driver, WAIT_S)

    def by_id(self, id_):
        return self.d.find_element(By.ID, id_)

    def visible(self, id_):
        return self.wait.until(EC.visibility_of_element_located((By.ID, id_)), f"#{id_} visible")

    def click(self, id_):
        self.wait.until(EC.element_to_be_clickable((By.ID, id_)), f"#{id_} clickable").click()

    def text_of(self, id_):
        """#id_'s rendered text, read in one step (the overview re-renders some
        cells on every poll, so a found element may be gone a moment later)."""
        text = self.d.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.innerText : null", id_
        )
        assert text is not None, f"no #{id_}"
        return text.strip()

    def until_text(self, id_, check, what):
        """Waits until #id_'s text satisfies check; returns the text."""
        found = {}

        def ok(_):
            t = self.text_of(id_)
            found["last"] = t
            return t if check(t) else False

        try:
            return self.wait.until(ok)
        except TimeoutException:
            raise AssertionError(f"{what}: #{id_} says {found.get('last')!r}") from None

    def shot(self, name):
        path = os.path.join(self.shots, name)
        assert self.d.save_screenshot(path), f"screenshot {path}"
        return path


def is_number(t):
    return t.replace(",", "").replace(".", "").isdigit()


def sign_in(p, base, token):
    p.d.get(base + "/console")
    p.visible("login-view")
    assert p.text_of("login-title") == "Sign in"
    # A wrong token: the API answers 401 and the prompt comes back, saying so.
    p.by_id("token").send_keys("not-the-admin-token-at-all")
    p.click("sign-in")
    p.until_text("login-error", lambda t: "refused" in t, "a wrong token is refused")
    p.visible("login-view")
    # The browser logs the refused request; nothing else may be logged.
    logged = [l["message"] for l in p.d.get_log("browser") if l["level"] == "SEVERE"]
    unexpected = [m for m in logged if "/api/v1/overview" not in m or "401" not in m]
    assert not unexpected, f"the browser logged {unexpected}"
    p.by_id("token").send_keys(token)
    p.click("sign-in")
    p.visible("overview-view")


def overview(p):
    shown = {}
    for state in ("ready", "delayed", "held"):
        shown[state] = p.until_text(f"queue-{state}", is_number, f"queue depth {state}")
    shown["dead"] = p.until_text("queue-dead", lambda t: t == "2", "two dead letters in the overview")
    # Throughput needs two polls (2 s apart).
    shown["events_per_s"] = p.until_text("rate-events", is_number, "throughput measured")
    for state in ("healthy", "failing", "idle"):
        shown[f"endpoints_{state}"] = p.until_text(f"endpoints-{state}", is_number, f"endpoints {state}")
    shown["events_delivered"] = p.until_text("total-events-delivered", is_number, "totals")
    shown["worker"] = p.text_of("worker-info")
    # The sparkline appears with the second measured rate (a third poll);
    # the screenshot waits for five.
    p.visible("spark")
    # Read in the page in one step: every poll replaces the polyline, so an
    # element found first may be gone by the time its attribute is asked for.
    points = "const l = document.querySelector('#spark polyline'); return l ? l.getAttribute('points') : ''"
    p.wait.until(lambda d: len(d.execute_script(points).split()) >= 5, "five rates in the sparkline")
    shown["events_per_s"] = p.text_of("rate-events")
    shown["spark_caption"] = p.text_of("spark-caption")
    p.shot("overview.png")
    return shown


def endpoints(p):
    """The endpoint list, the flaky endpoint's page, and its DLQ link (a filtered list)."""
    p.click("nav-endpoints")
    p.visible("endpoints-view")
    links = p.wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#endpoints-table tbody a.endpoint-link"), "endpoint rows"
    )
    names = sorted(l.text for l in links)
    next(l for l in links if l.text == "flaky").click()
    p.visible("endpoint-view")
    shown = {
        "listed": names,
        "state": p.until_text("endpoint-state", lambda t: t != "", "the endpoint's state"),
        "last_error": p.text_of("endpoint-last-error"),
        "circuit": p.text_of("endpoint-circuit"),
        "dead_lettered": p.text_of("endpoint-dead-lettered"),
    }
    p.click("endpoint-dlq-link")
    p.visible("dlq-view")
    rows = p.wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#dlq-table tbody tr"), "the endpoint's dead letters"
    )
    shown["dlq_filter"] = p.by_id("dlq-endpoint").get_attribute("value")
    shown["dlq_rows"] = len(rows)
    return shown


def entry_links(p, n, what):
    """The DLQ table's entry links once it shows n rows."""
    return p.wait.until(
        lambda d: (lambda ls: ls if len(ls) == n else False)(
            d.find_elements(By.CSS_SELECTOR, "#dlq-table tbody a.entry-link")
        ),
        what,
    )


def paging(p):
    """One entry a page (a limit the hash may carry): Next, then Previous."""
    p.d.execute_script("location.hash = '#/dlq?limit=1'")
    first = entry_links(p, 1, "page 1")[0].get_attribute("data-id")
    pages = {"first_range": p.until_text("dlq-range", lambda t: t != "", "page 1's range")}
    assert p.by_id("dlq-prev").get_attribute("disabled") is not None, "no page before the first"
    p.click("dlq-next")
    p.until_text("dlq-range", lambda t: t != pages["first_range"], "page 2's range")
    second = entry_links(p, 1, "page 2")[0].get_attribute("data-id")
    pages["second_range"] = p.text_of("dlq-range")
    pages["next_disabled"] = p.by_id("dlq-next").get_attribute("disabled") is not None
    pages["hash"] = p.d.execute_script("return location.hash")
    p.click("dlq-prev")
    p.until_text("dlq-range", lambda t: t == pages["first_range"], "back on page 1")
    pages["ids"] = [first, second]
    return pages


def filters(p):
    """The filter form: an age that is not one is refused; a reason nothing
    has empties the list; an endpoint and an age that match keep both; Clear."""
    p.click("nav-dlq")
    entry_links(p, 2, "two DLQ rows")
    shown = {}
    p.by_id("dlq-older").send_keys("soon")
    p.click("dlq-apply")
    shown["bad_age"] = p.until_text("dlq-error", lambda t: t != "", "a bad age refused")
    p.by_id("dlq-older").clear()
    p.by_id("dlq-reason").send_keys("HTTP 503")
    p.click("dlq-apply")
    p.visible("dlq-empty")
    shown["no_match_hash"] = p.d.execute_script("return location.hash")
    p.by_id("dlq-reason").clear()
    p.by_id("dlq-endpoint").send_keys("flaky")
    p.by_id("dlq-newer").send_keys("1h")
    p.click("dlq-apply")
    shown["match_rows"] = len(entry_links(p, 2, "both rows match flaky, newer than 1h"))
    shown["match_hash"] = p.d.execute_script("return location.hash")
    p.click("dlq-clear")
    p.wait.until(lambda d: d.execute_script("return location.hash") == "#/dlq", "Clear")
    entry_links(p, 2, "two DLQ rows again")
    return shown


def purge_one(p):
    """Selects the newer of the two entries and purges it, confirmed."""
    p.click("nav-dlq")
    p.visible("dlq-view")
    links = entry_links(p, 2, "two DLQ rows")
    rows = p.d.find_elements(By.CSS_SELECTOR, "#dlq-table tbody tr")
    listed = [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows]
    p.shot("dlq.png")
    victim = links[1].get_attribute("data-id")
    rows[1].find_element(By.CSS_SELECTOR, "input.dlq-select").click()
    p.until_text("dlq-purge-selected", lambda t: t == "Purge selected (1)", "one selected")
    p.click("dlq-purge-selected")
    p.visible("confirm")
    asked = p.text_of("confirm-text")
    assert asked.startswith("Purge 1 selected entry?"), asked
    p.click("confirm-ok")
    said = p.until_text("status", lambda t: t.startswith("Purged"), "the purge's outcome")
    left = entry_links(p, 1, "one row left")
    assert left[0].get_attribute("data-id") != victim
    return {"rows": listed, "purged_id": victim, "said": said}


def dlq_and_replay(p):
    links = entry_links(p, 1, "the entry left")
    row = p.d.find_element(By.CSS_SELECTOR, "#dlq-table tbody tr")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    listed = {"entry_id": links[0].get_attribute("data-id"), "row": cells}

    links[0].click()
    p.visible("entry-view")
    entry = {
        "reason": p.until_text("entry-reason", lambda t: t != "", "the entry's reason"),
        "attempts": p.text_of("entry-attempts"),
        "status": p.text_of("entry-status"),
        "endpoint": p.text_of("entry-endpoint"),
        "events": p.text_of("entry-event-count"),
        "webhook_id": p.text_of("entry-webhook-id"),
        "body": p.text_of("entry-body"),
        # A receiver's markup is text on the page: no element, no handler run.
        "markup_elements": len(p.d.find_elements(By.CSS_SELECTOR, "#entry-body *")),
        "title": p.d.title,
        "event_list": json.loads(p.text_of("entry-events")),
        "url_hash": p.d.execute_script("return location.hash"),
    }
    p.shot("entry.png")

    # Replay asks first; Cancel changes nothing.
    p.click("entry-replay")
    p.visible("confirm")
    assert "Replay dead letter" in p.text_of("confirm-text"), p.text_of("confirm-text")
    p.shot("confirm.png")
    p.click("confirm-cancel")
    p.wait.until(EC.invisibility_of_element_located((By.ID, "confirm")), "the dialog closes")
    p.until_text("status", lambda t: t == "Nothing was changed.", "cancel changes nothing")
    assert p.d.find_element(By.ID, "entry-view").is_displayed()

    # Confirmed: the entry's job goes back on the queue and the list says so.
    p.click("entry-replay")
    p.visible("confirm")
    p.click("confirm-ok")
    p.visible("dlq-view")
    said = p.until_text("status", lambda t: t.startswith("Replayed"), "the replay's outcome")
    p.visible("dlq-empty")
    p.shot("replayed.png")
    return listed, entry, said


def api_off(p, url):
    p.d.execute_script("sessionStorage.clear()")
    p.d.get(url + "/console")
    p.visible("login-view")
    p.by_id("token").send_keys("any-token-the-worker-has-none")
    p.click("sign-in")
    p.visible("off-view")
    # The one thing the browser may log here is that 404.
    logged = [l["message"] for l in p.d.get_log("browser") if l["level"] == "SEVERE"]
    unexpected = [m for m in logged if "/api/v1/overview" not in m or "404" not in m]
    assert not unexpected, f"the browser logged {unexpected}"
    return p.text_of("off-message")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("token")
    ap.add_argument("shots")
    ap.add_argument("--api-off")
    args = ap.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    d = browser()
    p = Page(d, args.shots)
    result = {}
    try:
        sign_in(p, args.base, args.token)
        result["token_in_session_storage"] = d.execute_script(
            "return sessionStorage.getItem('hookq.adminToken') === arguments[0]", args.token
        )
        result["local_storage_keys"] = d.execute_script("return localStorage.length")
        result["cookies"] = d.execute_script("return document.cookie")
        result["overview"] = overview(p)
        result["endpoints"] = endpoints(p)
        result["paging"] = paging(p)
        result["filters"] = filters(p)
        result["purge"] = purge_one(p)
        result["listed"], result["entry"], result["replay_said"] = dlq_and_replay(p)
        logs = d.get_log("browser")
        result["console_errors"] = [l["message"] for l in logs if l["level"] == "SEVERE"]
        if args.api_off:
            result["api_off_message"] = api_off(p, args.api_off)
    except Exception:
        traceback.print_exc()
        try:
            p.shot("failure.png")
            print("--- page text ---\n" + d.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
            print("--- browser log ---", file=sys.stderr)
            for l in d.get_log("browser"):
                print(l, file=sys.stderr)
        finally:
            d.quit()
        sys.exit(1)
    d.quit()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
