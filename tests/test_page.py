"""pareto.html in a real browser (Debian's headless chromium, driven by selenium): every front id drawn, and a click
on a point gives that point's export command. Its screenshot goes to the run folder as pareto-page.png."""
import shutil
import time

import pandas as pd
import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no browser here: `apt-get install chromium chromium-driver` (scripts/setup.sh does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_draws_every_front_id_and_a_click_gives_its_export_command(small_run, supernet, tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from jcw.search.page import write_page

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    write_page(run, supernet.space)  # its export commands name the copy
    front = pd.read_csv(run / "pareto.csv")
    start = time.perf_counter()
    browser.get((run / "pareto.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#front .scatterlayer .trace"))
    load_s = time.perf_counter() - start
    traces = browser.find_elements(By.CSS_SELECTOR, "#front .scatterlayer .trace")
    labelled = [t for t in traces if t.find_elements(By.CSS_SELECTOR, ".textpoint text")]
    assert len(labelled) == 1  # the true front; the predicted one is hidden until switched to
    ids = [int(t.text) for t in labelled[0].find_elements(By.CSS_SELECTOR, ".textpoint text")]
    points = labelled[0].find_elements(By.CSS_SELECTOR, "path.point")
    assert sorted(ids) == sorted(front["id"]) and len(points) == len(front)

    k = len(points) // 2
    ActionChains(browser).move_to_element(points[k]).click().perform()
    command = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "command").text)
    assert command == f"jcw export {run} --id {front['id'][k]}"
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#layers .barlayer .trace"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#layers .barlayer .trace")) == 3  # full, kept, densities
    browser.save_screenshot(str(run / "pareto-page.png"))
    assert (run / "pareto-page.png").stat().st_size > 20_000
    print(f"\npareto.html: {(run / 'pareto.html').stat().st_size / 1e6:.1f} MB, drawn in {load_s:.2f} s; "
          f"screenshot {run / 'pareto-page.png'}")
