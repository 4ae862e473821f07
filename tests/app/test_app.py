"""The local web app: scores match evaluation, bad files get messages, and (with a browser) the
real server works end to end in headless Chromium."""

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("flask", reason="the app extra is not installed: pip install -e '.[app]'")

from data_prep import synthetic  # noqa: E402
from deepfake_jax.app import __main__ as cli  # noqa: E402
from deepfake_jax.app import analysis, web  # noqa: E402
from deepfake_jax.app import loaded_runs as runs  # noqa: E402
from deepfake_jax.parsing.classes import PARSING_CLASSES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")  # git-ignored; CI may keep it
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Good and bad uploads. The 32-px JPEGs are byte-identical to the tiny dataset's first test
    images (same generator arguments as the `tiny_dataset` fixture), so their scores can be
    checked against the evaluation's predictions.csv."""
    root = tmp_path_factory.mktemp("uploads")
    synthetic.generate_140k(str(root / "gen"), counts={"test": 1}, image_size=32,
                            difficulty=0.0, seed=0)
    synthetic.generate_140k(str(root / "big"), counts={"test": 1}, image_size=160,
                            difficulty=0.0, seed=0)
    files = {
        "real": root / "gen" / "test" / "real" / "test_real_00000.jpg",
        "fake": root / "gen" / "test" / "fake" / "test_fake_00000.jpg",
        "face": root / "big" / "test" / "fake" / "test_fake_00000.jpg",  # the cascade finds it
    }
    data = files["fake"].read_bytes()
    files["corrupt"] = root / "corrupt.jpg"
    files["corrupt"].write_bytes(data[: len(data) // 2])
    files["text"] = root / "notes.png"
    files["text"].write_text("not an image at all\n")
    files["gif"] = root / "anim.gif"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files["gif"])
    files["uniform"] = root / "uniform.webp"
    Image.fromarray(np.full((120, 120, 3), 180, np.uint8)).save(files["uniform"], lossless=True)
    return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def loaded(trained_workdir):
    """The tiny run loaded as the app loads it (restored and compiled once), with heatmaps."""
    workdir, _ = trained_workdir
    run = runs.LoadedRun(workdir, batch_size=8)
    explain = runs.optional_module("deepfake_jax.inference.explain")
    if explain is not None:
        run.attach_explainer(explain)
    return run


@pytest.fixture
def client(loaded):
    app = web.create_app([loaded], notes=["Face parsing: off (test)."], max_upload_mb=1,
                         max_megapixels=0.02)
    return app.test_client()


def _post(client, paths, face_crop=False):
    data = {"images": [(open(p, "rb"), os.path.basename(p)) for p in paths]}
    if face_crop:
        data["face_crop"] = "1"
    try:
        return client.post("/predict", data=data, content_type="multipart/form-data")
    finally:
        for f, _ in data["images"]:
            f.close()


def _cards(html):
    """{file name: card html} of the result cards in a page."""
    cards = re.findall(r'<section class="result" data-status="(\w+)">\s*<h3>([^<]*)</h3>(.*?)'
                       r"</section>", html, re.S)
    return {name: (status, body) for status, name, body in cards}


def _eval_p_fake(workdir):
    with open(os.path.join(workdir, "eval", "test", "predictions.csv"), newline="") as f:
        return {os.path.basename(r["path"]): float(r["p_fake"]) for r in csv.DictReader(f)}


def test_upload_scores_like_evaluation_and_explains_bad_files(client, loaded, images,
                                                             trained_workdir):
    names = ["real", "fake", "corrupt", "text", "gif"]
    r = _post(client, [images[k] for k in names])
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert "Traceback" not in html
    cards = _cards(html)
    assert list(cards) == ["test_real_00000.jpg", "test_fake_00000.jpg", "corrupt.jpg",
                           "notes.png", "anim.gif"]
    reference = _eval_p_fake(trained_workdir[0])
    for name in ("test_real_00000.jpg", "test_fake_00000.jpg"):
        status, body = cards[name]
        assert status == "ok"
        p = float(re.search(r'class="p-fake">([0-9.]+)<', body).group(1))
        assert p == pytest.approx(reference[name], abs=1e-4)  # page shows 4 decimals
        label = "fake" if reference[name] >= loaded.threshold else "real"
        assert f'class="{label}">{label}<' in body
        assert "eval view" in body and "data:image/png;base64," in body
        if loaded.explainer is not None:
            assert "heatmap (Grad-CAM)" in body
    assert cards["corrupt.jpg"][0] == "error"
    assert "Could not score this file: not a readable image: truncated" in cards["corrupt.jpg"][1]
    assert "not a recognised image format" in cards["notes.png"][1]
    assert "unsupported file type &#39;.gif&#39;" in cards["anim.gif"][1]
    assert "Face parsing: off (test)." in html


def test_face_crop_no_face_and_pixel_limit(client, images):
    cards = _cards(_post(client, [images["uniform"], images["face"]], face_crop=True)
                   .get_data(as_text=True))
    assert cards["uniform.webp"][0] == "error" and "no face found" in cards["uniform.webp"][1]
    # the 160-px face is 0.0256 megapixels, over this app's 0.02 limit
    assert "image too large: 160x160 = 0.0256 megapixels; the limit is 0.02" in cards[
        "test_fake_00000.jpg"][1]


def test_face_crop_scores_the_face(loaded, images):
    results = analysis.analyse([analysis.Upload("face.jpg", open(images["face"], "rb").read())],
                               [loaded], face_crop=True)
    (res,) = results
    assert res.ok and res.face_box is not None and 0.0 <= res.scores[0].p_fake <= 1.0


def test_limits_and_failures_give_messages_and_the_server_goes_on(client, loaded, images,
                                                                  monkeypatch):
    big = {"images": [(open(images["real"], "rb"), "a.jpg")],
           "padding": "x" * (1024 * 1024 + 1)}
    r = client.post("/predict", data=big, content_type="multipart/form-data")
    big["images"][0][0].close()
    assert r.status_code == 413
    assert "The upload is larger than the limit of 1 MB" in r.get_data(as_text=True)
    r = client.post("/predict", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "Choose at least one image" in r.get_data(as_text=True)

    def broken(views):
        raise RuntimeError("device lost")

    monkeypatch.setattr(loaded, "score", broken)
    r = _post(client, [images["real"]])
    html = r.get_data(as_text=True)
    assert r.status_code == 500
    assert "Something went wrong on the server (RuntimeError: device lost)" in html
    assert "Traceback" not in html
    monkeypatch.undo()
    assert _cards(_post(client, [images["real"]]).get_data(as_text=True))[
        "test_real_00000.jpg"][0] == "ok"


def test_models_page_shows_config_metrics_and_plots(client, loaded):
    html = client.get("/models").get_data(as_text=True)
    assert f"latest (step {loaded.step})" in html and "resnet" in html
    for split in ("valid", "test"):
        assert f"evaluation: {split}" in html
        for plot in ("roc.png", "pr.png", "confusion_matrix.png"):
            assert f'src="/runs/0/eval/{split}/{plot}"' in html
    auc = runs.find_eval_reports(loaded.workdir)[0].metrics["roc_auc"]
    assert f"<th>roc_auc</th><td>{auc:.4f}</td>" in html
    r = client.get("/runs/0/eval/test/roc.png")
    assert r.status_code == 200 and r.data.startswith(b"\x89PNG")
    assert client.get("/runs/0/eval/../config.json").status_code == 404
    assert client.get("/runs/0/eval/%2e%2e/%2e%2e/etc/passwd.png").status_code == 404
    assert client.get("/runs/5/eval/test/roc.png").status_code == 404
    assert client.get("/healthz").get_json()["runs"] == [loaded.name]


class _StandInParser:
    """`deepfake_jax.segment.FaceParser`'s interface; labels the left half of every image skin
    and the right half hair, so the expected shares are known."""

    image_size = 16

    def __init__(self, workdir, checkpoint="latest"):
        self.workdir = workdir

    def parse(self, images):
        n, h, w = np.asarray(images).shape[:3]
        out = np.full((n, h, w), PARSING_CLASSES.index("skin"), np.int32)
        out[:, :, w // 2:] = PARSING_CLASSES.index("hair")
        return out


def test_face_parsing_overlay_and_heat_shares_per_region(loaded, images):
    if loaded.explainer is None:
        pytest.skip("deepfake_jax.inference.explain is not importable: no heatmaps to share out")
    from deepfake_jax.inference import explain
    from deepfake_jax.parsing import label_maps

    parsing = runs.FaceParsing(types.SimpleNamespace(FaceParser=_StandInParser), label_maps,
                               "parsing_run")
    client = web.create_app([loaded], parsing=parsing).test_client()
    status, body = _cards(_post(client, [images["real"]]).get_data(as_text=True))[
        "test_real_00000.jpg"]
    assert status == "ok" and f"{loaded.name}: face parsing" in body
    view, _ = loaded.load_view(images["real"], False)
    expected = explain.region_shares(loaded.heatmaps([view])[0],
                                     _StandInParser(None).parse(view[None])[0])
    shown = {name: (float(h), float(a)) for name, h, a in re.findall(
        r"<tr><td>(\w+)</td><td>([0-9.]+)%</td>\s*<td>([0-9.]+)%</td></tr>", body)}
    assert set(shown) == set(expected)
    for region, (heat, area) in expected.items():
        assert shown[region] == pytest.approx((100 * heat, 100 * area), abs=0.051)
    assert shown["skin"][1] == shown["hair"][1] == 50.0


def test_command_line_errors_name_the_bad_workdir(tmp_path):
    args = cli.parse_args(["--workdir", str(tmp_path)])
    assert args.host == "127.0.0.1"  # this machine only, unless asked
    with pytest.raises(SystemExit, match=f"error: --workdir {tmp_path}: .*no config.json"):
        cli.load_everything(args)


# ----------------------------------------------------------------------------- browser


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc, url, log_path, timeout):
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n"
                        + open(log_path).read()[-3000:])
        try:
            with urllib.request.urlopen(url + "healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the app did not answer within {timeout} s:\n" + open(log_path).read()[-3000:])


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1100"):
        options.add_argument(arg)
    # The system driver: Selenium Manager would try to download one.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="no headless browser: install the Debian packages chromium and "
                           "chromium-driver (apt-get install chromium chromium-driver)")
def test_browser_end_to_end(trained_workdir, images, tmp_path):
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    workdir, _ = trained_workdir
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ)
    # The server runs as a user runs it: on the one CPU device, not the tests' 8 fake ones.
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "").strip()
    log_path = tmp_path / "server.log"
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deepfake_jax.app", "--workdir", workdir,
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    driver = None
    try:
        driver = _chrome()  # starts while the server loads its model
        _wait_until_up(proc, url, log_path, timeout=120)
        driver.get(url)
        driver.find_element(By.ID, "images").send_keys(
            "\n".join([images["real"], images["corrupt"]]))
        driver.find_element(By.ID, "submit").click()
        wait = WebDriverWait(driver, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "section.result")))
        cards = driver.find_elements(By.CSS_SELECTOR, "section.result")
        driver.save_screenshot(os.path.join(ARTIFACTS, "app_upload.png"))
        assert [c.find_element(By.TAG_NAME, "h3").text for c in cards] == [
            "test_real_00000.jpg", "corrupt.jpg"]
        p_fake = float(cards[0].find_element(By.CSS_SELECTOR, ".p-fake").text)
        assert p_fake == pytest.approx(_eval_p_fake(workdir)["test_real_00000.jpg"], abs=1e-4)
        message = cards[1].find_element(By.CSS_SELECTOR, ".error").text
        assert message.startswith("Could not score this file: not a readable image")
        assert "Traceback" not in driver.page_source
        driver.get(url + "models")
        assert "evaluation: test" in driver.page_source
        driver.save_screenshot(os.path.join(ARTIFACTS, "app_models.png"))
        assert proc.poll() is None  # still serving after the bad file
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
