"""The web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright), against a real `flatlay serve` with its worker.

Screenshots go to tests/artifacts/; with FLATLAY_UPDATE_DOCS=1 the batch view is also saved
as docs/web-page.png for the README.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, FileChooser, Page, expect, sync_playwright

from service.settings import Settings
from tests.support import REPO, ServiceProcesses, encode, free_port, garment_photo

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts"
JOB_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    root = tmp_path_factory.mktemp("web")
    port = free_port()
    svc = ServiceProcesses.start(
        [["serve", "--port", str(port), "--data-dir", str(root / "data")]],
        env={"FLATLAY_AUTH_ENABLED": "false"}, port=port, log_dir=root,
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver "
                    "(.ci/run installs it)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, service: ServiceProcesses) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 960}, accept_downloads=True)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    page.goto(f"{service.base_url}/")
    expect(page.locator("#service-state")).to_have_text("Service ready")
    yield page
    context.close()
    assert script_errors == [], f"script errors on the page: {script_errors}"


def _photo(path: Path, colour: tuple[int, int, int] = (40, 90, 200), **kw: object) -> Path:
    path.write_bytes(encode(garment_photo(480, 360, colour=colour, **kw)[0], "JPEG",
                            quality=92))
    return path


def _watch_statuses(page: Page) -> None:
    """Record every status a row shows, in order, in window.seenStatuses."""
    page.evaluate("""() => {
        window.seenStatuses = [];
        const record = (chip) => {
            const last = window.seenStatuses[window.seenStatuses.length - 1];
            const text = chip.textContent;
            if (text && text !== last) window.seenStatuses.push(text);
        };
        new MutationObserver(() => document.querySelectorAll('#run-rows .chip').forEach(record))
            .observe(document.getElementById('run-rows'),
                     {subtree: true, childList: true, characterData: true});
    }""")


def test_upload_from_the_keyboard_watch_progress_see_and_download(
    page: Page, tmp_path: Path
) -> None:
    photo = _photo(tmp_path / "blue shirt.jpg", offset=(0.1, 0.0))
    # Options come from the API: the default pipeline is preselected.
    expect(page.locator("#pipeline")).to_have_value(Settings().default_pipeline)
    # Listen for the file dialog well before it opens: Playwright intercepts the dialog only
    # once its listener is installed in the browser.
    choosers: list[FileChooser] = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.select_option("#output-size", "512")
    page.select_option("#format", "png")
    _watch_statuses(page)

    # The drop zone is a button: Enter opens the file dialog.
    page.focus("#dropzone")
    page.keyboard.press("Enter")
    for _ in range(50):
        if choosers:
            break
        page.wait_for_timeout(100)
    assert len(choosers) == 1, "Enter on the drop zone opened no file dialog"
    choosers[0].set_files(str(photo))

    row = page.locator("#run-rows tr").first
    expect(row.locator(".file-name")).to_have_text("blue shirt.jpg")
    expect(row.locator(".chip")).to_have_text("Done", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".bar")).to_have_attribute("aria-valuenow", "100")
    seen = page.evaluate("window.seenStatuses")
    assert seen[0] == "Uploading" and "Queued" in seen and seen[-1] == "Done", seen

    # The result is shown beside its original, at the requested size.
    expect(page.locator("#viewer-body")).to_be_visible()
    page.wait_for_function("document.getElementById('after-img').naturalWidth > 0")
    natural = page.evaluate("[document.getElementById('after-img').naturalWidth,"
                            " document.getElementById('after-img').naturalHeight]")
    assert natural == [512, 512]
    # The job's compliance with its preset is shown (512 px is not square-white's size).
    expect(page.locator("#preset")).to_have_value("square-white")
    expect(page.locator("#viewer-compliance")).to_contain_text(
        "Fails the square-white preset: size [512,512] (needs [1024,1024])")
    # flatten gives a structure overlay: the page offers it and loads it on demand.
    toggle = page.locator("#overlay-toggle")
    expect(toggle).to_be_visible()
    expect(page.locator("#overlay-img")).to_be_hidden()
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#overlay-img")).to_be_visible()
    page.wait_for_function("document.getElementById('overlay-img').naturalWidth === 512")
    toggle.click()
    expect(page.locator("#overlay-img")).to_be_hidden()
    expect(toggle).to_have_text("Show structure overlay")
    # The slider moves from the keyboard.
    page.focus("#compare-slider")
    page.keyboard.press("End")
    assert page.locator("#compare-slider").input_value() == "100"
    page.keyboard.press("Home")
    page.keyboard.press("PageUp")
    page.screenshot(path=ARTIFACTS / "web-one-photo.png", full_page=True)

    with page.expect_download() as download:
        row.locator(".download").click()
    assert download.value.suggested_filename == "blue shirt-flatlay.png"
    image = Image.open(download.value.path())
    assert image.format == "PNG" and image.size == (512, 512)


def test_a_text_file_is_rejected_with_the_servers_message(page: Page, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not the photos you are looking for\n")
    page.set_input_files("#file-input", str(notes))
    row = page.locator("#run-rows tr").first
    expect(row.locator(".chip")).to_have_text("Rejected")
    expect(row.locator(".stage")).to_contain_text("not a readable image")
    alert = page.locator("#messages .message")
    expect(alert).to_have_count(1)
    expect(alert).to_contain_text("notes.txt was not accepted")
    expect(alert).to_contain_text("accepted: image/jpeg, image/png, image/webp")
    expect(row.locator(".download")).to_be_hidden()
    page.screenshot(path=ARTIFACTS / "web-rejected.png", full_page=True)


def test_a_zip_and_photos_in_one_run_with_an_api_key_and_download_all(
    page: Page, tmp_path: Path
) -> None:
    archive = tmp_path / "catalog.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("spring/red.jpg", _photo(tmp_path / "red.jpg", (190, 40, 50)).read_bytes())
        zf.writestr("spring/readme.txt", "not a photo")
        zf.writestr("__MACOSX/spring/._red.jpg", b"\x00\x05\x16\x07")
    green = _photo(tmp_path / "green.jpg", (40, 150, 80), offset=(-0.1, 0.05))

    authorizations: set[str | None] = set()
    page.on("request", lambda r: authorizations.add(r.headers.get("authorization"))
            if "/assets" in r.url else None)
    page.fill("#api-key", "fl-test-key")
    page.locator("#api-key").dispatch_event("change")
    page.select_option("#output-size", "256")
    page.check("input[name='background-kind'][value='transparent']")
    page.select_option("#format", "jpeg")
    # JPEG cannot be transparent: the page says so and sends nothing.
    expect(page.locator("#options-error")).to_contain_text("JPEG has no transparency")
    page.set_input_files("#file-input", [str(green)])
    expect(page.locator("#messages")).to_contain_text("Nothing was sent")
    expect(page.locator("#run-rows tr")).to_have_count(0)
    page.select_option("#format", "webp")
    expect(page.locator("#options-error")).to_be_hidden()
    # A hint goes with every upload; one the service would refuse is refused here first.
    page.fill("#hint", "short\u0007sleeve tee")
    expect(page.locator("#options-error")).to_contain_text("control characters")
    page.fill("#hint", "short sleeve tee")
    expect(page.locator("#options-error")).to_be_hidden()
    created = []
    page.on("response", lambda r: created.append(r)
            if r.request.method == "POST" and r.url.endswith("/assets") else None)

    page.set_input_files("#file-input", [str(archive), str(green)])
    rows = page.locator("#run-rows tr")
    expect(rows).to_have_count(3)  # red.jpg and readme.txt from the ZIP, green.jpg
    expect(rows.nth(0).locator(".file-from")).to_have_text("from catalog.zip")
    for i in (0, 2):
        expect(rows.nth(i).locator(".chip")).to_have_text("Done", timeout=JOB_TIMEOUT_MS)
    expect(rows.nth(1).locator(".chip")).to_have_text("Rejected")
    expect(page.locator("#run-summary")).to_have_text("2 of 3 done · 1 rejected")
    assert authorizations == {"Bearer fl-test-key"}
    ids = [r.json()["id"] for r in created if r.status == 202]
    assert len(ids) == 2  # red.jpg and green.jpg; each job keeps the hint it was sent with
    for asset_id in ids:
        options = page.request.get(f"{page.url.rstrip('/')}/assets/{asset_id}").json()["options"]
        assert options["hint"] == "short sleeve tee", options

    # Messages can be dismissed (keeping the one about the ZIP's text file).
    page.locator("#messages .message", has_text="Nothing was sent").locator("button").click()
    expect(page.locator("#messages .message")).to_have_count(1)
    page.click("#run-rows tr:nth-child(3) .file-name")
    expect(page.locator("#viewer-name")).to_have_text("green.jpg")
    expect(page.locator("#viewer-title")).to_be_focused()
    page.wait_for_function("document.getElementById('after-img').naturalWidth === 256")
    # The overlay is fetched with the API key like every other request.
    page.click("#overlay-toggle")
    page.wait_for_function("document.getElementById('overlay-img').naturalWidth === 256")
    assert authorizations == {"Bearer fl-test-key"}
    page.click("#overlay-toggle")
    page.locator("#compare-slider").fill("38")
    page.mouse.move(0, 0)  # no hover styles in the screenshot
    page.screenshot(path=ARTIFACTS / "web-batch.png", full_page=True)
    if os.environ.get("FLATLAY_UPDATE_DOCS") == "1":
        page.screenshot(path=REPO / "docs" / "web-page.png")

    with page.expect_download() as download:
        page.click("#download-all")
    assert download.value.suggested_filename.endswith(".zip")
    with zipfile.ZipFile(download.value.path()) as zf:
        assert zf.testzip() is None  # every CRC matches
        names = zf.namelist()
        assert names == ["red-flatlay.webp", "green-flatlay.webp"]
        for name in names:
            image = Image.open(io.BytesIO(zf.read(name)))
            assert image.format == "WEBP" and image.size == (256, 256)
            assert image.convert("RGBA").getpixel((0, 0))[3] == 0  # transparent corner


def test_a_preset_sets_the_options_and_the_result_is_checked_against_it(
    page: Page, tmp_path: Path
) -> None:
    page.select_option("#preset", "amazon-main")
    # Its defaults: a 2000 px white JPEG (a size the list did not have is added).
    expect(page.locator("#output-size")).to_have_value("2000")
    expect(page.locator("#format")).to_have_value("jpeg")
    expect(page.locator("input[name='background-kind'][value='#ffffff']")).to_be_checked()
    expect(page.locator("#preset-hint")).to_contain_text("Amazon main image")
    # Options the preset would refuse may still be chosen; the page says what will happen.
    page.select_option("#format", "webp")
    expect(page.locator("#preset-hint")).to_contain_text(
        "amazon-main expects JPEG or PNG: results will fail its check")

    page.select_option("#preset", "transparent")
    expect(page.locator("input[name='background-kind'][value='transparent']")).to_be_checked()
    expect(page.locator("#format")).to_have_value("png")
    expect(page.locator("#output-size")).to_have_value("1024")
    page.set_input_files("#file-input", str(_photo(tmp_path / "cut.jpg")))
    row = page.locator("#run-rows tr").first
    expect(row.locator(".chip")).to_have_text("Done", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#viewer-compliance")).to_have_text("Meets the transparent preset.")
    expect(page.locator("#viewer-compliance")).to_have_attribute("data-passed", "true")
