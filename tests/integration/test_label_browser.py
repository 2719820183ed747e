"""`visalign label` in headless Chromium: a scripted annotator labels pairs by clicks and keys, undoes, the server
process is killed (SIGKILL) and restarted mid-session, and the labels folder trains one Diffusion-DPO step with the
sd15-dpo recipe as it is. ``UPDATE_DOCS_IMAGES=1`` also refreshes docs/images/label-page.png."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.helpers.browser import broken_images, browser, console_errors, screenshot  # noqa: F401
from visalign.cli.train import main as train_main
from visalign.evaluation.labeling import EVENTS_DIR, label_0, left_image
from visalign.testing.diffusion import save_tiny_sd

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [("a red square on a white background", "red", "blue"), ("a blue circle", "blue", "green"),
          ("a green triangle", "green", "orange"), ("a small orange square", "orange", "red"),
          ("a purple circle on the left", "purple", "gray")]


def write_shape_pairs(root: Path) -> Path:
    """A paired folder as the pair generator writes it: 5 pairs of 64x64 drawings, chosen/ and rejected/."""
    rows = []
    for i, (caption, *colours) in enumerate(SHAPES):
        for side, colour in zip(("chosen", "rejected"), colours):
            image = Image.new("RGB", (64, 64), "white")
            ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill=colour) if i % 2 == 0 else \
                ImageDraw.Draw(image).ellipse((14, 14, 50, 50), fill=colour)
            (root / side).mkdir(parents=True, exist_ok=True)
            image.save(root / side / f"{i:05d}_00_01.png")
        rows.append(json.dumps({"file_name": f"{i:05d}_00_01.png", "caption": caption}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return root


def start(pairs: Path, out: Path) -> tuple[subprocess.Popen, str]:
    """`visalign label` as its own process on a free port; returns it and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "visalign", "label", "--pairs", str(pairs), "--out", str(out),
                             "--annotator", "alice", "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("open http"):
            return proc, line.split()[1]
    raise AssertionError(f"visalign label exited with {proc.wait()} before printing its URL")


def wait_for(driver, pair: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.pair") == pair)
    WebDriverWait(driver, 20).until(lambda d: not broken_images(d) or pair == "done")


def press(driver, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.TAG_NAME, "body").send_keys(key)


def click(driver, button: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, f"btn-{button}").click()


def test_label_in_the_browser_survive_a_kill_and_train_on_the_labels(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    pairs, out = write_shape_pairs(tmp_path / "pairs"), tmp_path / "labels"
    proc, url = start(pairs, out)
    try:
        browser.set_window_size(900, 560)
        browser.get(url)
        wait_for(browser, "0")
        assert browser.find_element(By.ID, "caption").text == SHAPES[0][0]
        assert "0 / 5" in browser.find_element(By.ID, "progress").text
        screenshot(browser, tmp_path / "label-page.png", 900, 560)
        if os.environ.get("UPDATE_DOCS_IMAGES"):
            screenshot(browser, ROOT / "docs" / "images" / "label-page.png", 900, 560)
        click(browser, "left")
        wait_for(browser, "1")
        press(browser, Keys.ARROW_RIGHT)
        wait_for(browser, "2")
        press(browser, "t")
        wait_for(browser, "3")
        press(browser, "u")  # undo the tie on pair 2
        wait_for(browser, "2")
        click(browser, "right")
        wait_for(browser, "3")
        assert "3 / 5" in browser.find_element(By.ID, "progress").text
    finally:
        proc.kill()  # SIGKILL: no shutdown handler runs
        proc.wait()
    proc, url = start(pairs, out)
    try:
        browser.get(url)
        wait_for(browser, "3")  # continues where it stopped
        press(browser, Keys.ARROW_LEFT)
        wait_for(browser, "4")
        click(browser, "skip")
        wait_for(browser, "done")
        click(browser, "undo")
        wait_for(browser, "4")
        press(browser, Keys.ARROW_DOWN)  # a tie this time
        wait_for(browser, "done")
        assert not console_errors(browser)
    finally:
        proc.terminate()
        proc.wait()

    rows = [json.loads(line) for line in (out / "alice.jsonl").read_text().splitlines()]
    choices = ["left", "right", "right", "left", "tie"]
    assert [r["pair"] for r in rows] == list(range(5))
    assert [r["label_0"] for r in rows] == [label_0(c, left_image(0, "alice", i)) for i, c in enumerate(choices)]
    assert [r["caption"] for r in rows] == [s[0] for s in SHAPES]
    events = [json.loads(line)["event"] for line in (out / EVENTS_DIR / "alice.jsonl").read_text().splitlines()]
    assert events == ["label", "label", "label", "undo", "label", "label", "skip", "undo", "label"]

    run = tmp_path / "run"
    argv = ["--config", "sd15-dpo", "--model", str(save_tiny_sd(tmp_path / "sd15")), "--dataset", str(out),
            "--output_dir", str(run), "--max_steps", "1", "--per_device_batch_size", "2", "--resolution", "32",
            "--mixed_precision", "no", "--vae", "none", "--report_to", "none", "--logging_steps", "1",
            "--validation_prompts", "[]"]
    assert train_main(argv) == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged if "loss" in line] == [1]
