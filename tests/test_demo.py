"""`adaptive-lm demo` end to end on the shipped checkpoints (run once for the module), its summary,
and its HTML report opened in headless Chromium: every section drawn, no console error, the
timelines scrub, a screenshot saved."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import open_browser

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("lm", "daedal", "vmd", "calm", "calm-arith", "compress", "entropy", "benches")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    p = subprocess.run([sys.executable, "-m", "adaptive_lm", "demo", "--out", str(out)], capture_output=True,
                       text=True, cwd=REPO, timeout=600)              # from the repo: docs/bench/ has bench JSONs
    assert p.returncode == 0, p.stderr
    return out, p.stdout, json.loads((out / "summary.json").read_text())


def test_demo_summary_has_every_method(demo):
    out, stdout, summary = demo
    assert stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"     # ends with the report path
    assert len(summary["samples"]) == 4 and all(s for s in summary["samples"])
    d = summary["daedal"]                                           # builtin:mdlm-arith is shipped
    for key in ("daedal", "fixed-256"):
        frames = d[key]["timeline"]["frames"]
        assert len(frames) == d[key]["nfe"] - (1 if key == "daedal" else 0)   # stage 1's last look grows nothing
        assert frames[-1]["c"].count(d[key]["timeline"]["mask"]) == 0               # the last frame has no mask
        assert len(frames[-1]["c"]) == d[key]["n_token"]
    assert len(d["fixed-256"]["timeline"]["frames"]) == 256
    stage1 = [f for f in d["daedal"]["timeline"]["frames"] if f["stage"] == 1]
    assert all(len(f["ins"]) == 8 for f in stage1)                               # E_factor masks per growth step
    v = summary["vmd"]
    for label in ("VMD", "MDM"):
        tl = v[label]["timeline"]
        assert tl["frames"][0] == v["puzzle"] and tl["frames"][-1] == v[label]["grid"] and len(tl["frames"]) == 6
        assert sorted(c for step in tl["new"] for c in step) == [i for i, ch in enumerate(v["puzzle"]) if ch == "."]
    calm = summary["calm"]                                           # builtin:calm-pydocs is shipped
    certified, loose = calm["runs"]
    assert certified["certified"] and not loose["certified"] and loose["threshold"] < certified["threshold"]
    for run in calm["runs"]:
        assert all(1 <= x <= 8 for x in run["exit_layers"]) and run["exit_layers"][0] == 8   # 1st token: prompt pass
        assert len(run["pieces"]) == len(run["tokens"]) == len(run["exit_layers"])
    assert loose["avg_layers"] <= certified["avg_layers"]
    ca = summary["calm-arith"]                                       # builtin:calm-arith: exits that pay
    assert ca["model"] == "builtin:calm-arith" and ca["prompt"] == d["prompt"]    # DAEDAL's problem
    certified, loose = ca["runs"]
    assert certified["certified"] and ca["measure"] in ("margin", "patience") and certified["avg_layers"] < 2.5
    assert all(len(run["pieces"]) == len(run["exit_layers"]) == 80 for run in ca["runs"])
    comp = summary["compress"]                                       # builtin:compress-mix is shipped
    assert comp["roundtrip"] is True and comp["compressed"] < comp["bytes"]
    ent = summary["entropy"]                                         # builtin:eem-pydocs is shipped
    assert ent["bits"][0] is None and len(ent["bits"]) == len(ent["tokens"]) > 10
    assert all(isinstance(b, float) for b in ent["bits"][1:])


def test_demo_report_renders_in_headless_chromium(demo, tmp_path):
    out, _, summary = demo
    driver, why_not = open_browser()
    if driver is None:
        pytest.skip(f"no headless Chromium: {why_not}")
    try:
        driver.get((out / "report.html").as_uri())
        # the page draws itself after load; on a busy machine that can take a few seconds
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait
        ready = lambda d: d.execute_script("return document.body.dataset.ready") == "1"
        try:
            WebDriverWait(driver, 60, poll_frequency=0.2).until(ready)
        except TimeoutException:
            pass                                                      # the assert below reports it
        assert ready(driver)
        for sid in SECTIONS:
            sec = driver.find_element("id", sid)
            assert sec.is_displayed() and sec.size["height"] > 80, sid
            assert sec.get_attribute("data-ready") == "1", f"section {sid} was not drawn"
        assert len(driver.find_elements("css selector", "#benches img.plot")) >= 3    # docs/bench/ plots
        # scrub DAEDAL's timeline to its first step: the caption and the canvas follow
        box = driver.find_element("css selector", "#daedal .timeline")
        driver.execute_script("var s=arguments[0].querySelector('input');s.value=0;"
                              "s.dispatchEvent(new Event('input'))", box)
        caption = box.find_element("css selector", ".caption").text
        first = summary["daedal"]["daedal"]["timeline"]["frames"][0]
        assert caption.startswith("step 1 /") and f"canvas {len(first['c'])}" in caption
        assert len(box.find_elements("css selector", ".k-mask, .k-ins")) == first["c"].count(
            summary["daedal"]["daedal"]["timeline"]["mask"])
        # the Sudoku board at step 0 shows exactly the givens
        board = driver.find_element("css selector", "#vmd .timeline")
        driver.execute_script("var s=arguments[0].querySelector('input');s.value=0;"
                              "s.dispatchEvent(new Event('input'))", board)
        filled = [td.text for td in board.find_elements("css selector", "td") if td.text]
        assert len(filled) == 81 - summary["vmd"]["puzzle"].count(".")
        driver.find_element("css selector", "#vmd button").click()                 # play starts without error
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert not errors, errors
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1300, min(height, 8000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
