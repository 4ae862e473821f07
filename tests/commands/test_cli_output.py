"""Each command-line tool, run as a user runs it on a tiny run: it opens `--checkpoint best` of a
classifier and of a face-parsing run, and prints its own lines with at most a handful from the
libraries (orbax alone used to print dozens of INFO lines per restore)."""

import glob
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The project's own source files: log lines name the file that wrote them.
OWN_FILES = {os.path.basename(p) for pattern in ("deepfake_jax/**/*.py", "data_prep/*.py")
             for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)}
# absl / C++ log lines: "I1205 06:53:17.708313 139784259578752 checkpoint_manager.py:1489] ..."
LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ([\w.-]+):\d+\]")
MAX_LIBRARY_LINES = 5


def library_lines(output: str) -> list[str]:
    """Lines written by the libraries: their log lines and Python warnings."""
    found = []
    for line in re.split(r"[\r\n]+", output):
        m = LOG_LINE.match(line)
        if (m and m.group(1) not in OWN_FILES) or "site-packages" in line or re.search(
                r"\b\w*Warning: ", line):
            found.append(line)
    return found


def test_library_lines_are_recognised():
    output = ("I1205 06:53:17.708313 1397 checkpoint_manager.py:1489] Saving\n"
              "I1205 06:53:17.708313 1397 trainer.py:787] step 2/12\r"
              "W0000 00:00:1733 12 cpu_client.cc:100] x\n"
              "/x/site-packages/grain/a.py:3: UserWarning: y\n  warnings.warn(y)\n"
              "step 4 test: mIoU 0.01\n")
    assert len(library_lines(output)) == 3


def _run(args: list[str], timeout: int = 300) -> str:
    run = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    return output


def _assert_quiet(output: str) -> None:
    noise = library_lines(output)
    assert len(noise) <= MAX_LIBRARY_LINES, "\n".join(noise[:40])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two generated face images (a folder to score / parse)."""
    from data_prep import synthetic

    root = tmp_path_factory.mktemp("cli_images")
    synthetic.generate_140k(str(root / "gen"), counts={"test": 1}, image_size=64, seed=1)
    folder = root / "faces"
    folder.mkdir()
    for path in glob.glob(str(root / "gen" / "test" / "*" / "*.jpg")):
        os.rename(path, folder / os.path.basename(path))
    return str(folder)


def test_evaluate_classifier_best_with_robustness(trained_workdir):
    workdir, _ = trained_workdir
    out = _run(["deepfake_jax.evaluate", "--workdir", workdir, "--checkpoint", "best",
                "--bootstrap", "0", "--robustness"])
    assert "checkpoint step" in out and "robustness of" in out
    _assert_quiet(out)


def test_parsing_evaluation_best(parsing_run):
    workdir, _ = parsing_run
    out = _run(["deepfake_jax.evaluate", "--workdir", workdir, "--checkpoint", "best",
                "--split", "valid"])
    assert "step 4 valid: mIoU" in out
    _assert_quiet(out)


def test_segment_best(parsing_run, images, tmp_path):
    workdir, _ = parsing_run
    out = _run(["deepfake_jax.segment", images, "--workdir", workdir, "--checkpoint", "best",
                "--output", str(tmp_path / "parsed")])
    assert "segmented 2 file(s)" in out
    _assert_quiet(out)


def test_predict_best(trained_workdir, images, tmp_path):
    workdir, _ = trained_workdir
    out = _run(["deepfake_jax.predict", "--workdir", workdir, "--checkpoint", "best",
                "--output", str(tmp_path / "p.csv"), images])
    assert "2 file(s): ok 2" in out
    _assert_quiet(out)


def test_export_best(trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    out = _run(["deepfake_jax.export", "--workdir", workdir, "--checkpoint", "best",
                "--output", str(tmp_path / "m.jaxexport")])
    assert "parity with the trainer's eval step" in out
    _assert_quiet(out)


def test_verbose_shows_the_library_lines(trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    out = _run(["deepfake_jax.export", "--workdir", workdir, "--output",
                str(tmp_path / "m.jaxexport"), "--verbose"])
    assert len(library_lines(out)) > MAX_LIBRARY_LINES  # orbax's restore lines are back


@pytest.mark.slow
def test_training_kfold_and_search(tiny_dataset, tmp_path):
    """main (generated data, 2 folds: the k-fold plots too) and a 1-trial search, 4 steps
    per run."""
    common = ["--config", "configs/default.py:tiny", "--config.num_train_steps=4"]
    out = _run(["deepfake_jax.main", *common, "--workdir", str(tmp_path / "cv"),
                "--config.kfold=2"], timeout=600)
    assert "2-fold cross-validation" in out and "step 4 validation" in out
    # The data generation and conversion show their progress.
    assert "Generating synthetic faces" in out and "140k: 100%" in out and "convert: 100%" in out
    _assert_quiet(out)
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    out = _run(["deepfake_jax.search", *common, f"--config.data.dir={tiny_dataset}",
                "--workdir", str(tmp_path / "search"), "--config.search.num_trials=1"],
               timeout=600)
    assert "search results" in out
    _assert_quiet(out)


def test_app_starts_quietly(trained_workdir, parsing_run, tmp_path):
    pytest.importorskip("werkzeug", reason="the app extra is not installed")
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepfake_jax.app", "--workdir", trained_workdir[0],
             "--segmentation_workdir", parsing_run[0], "--checkpoint", "best", "--port", "0"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while "serving on http" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "the app did not start in 240 s"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    _assert_quiet(log_path.read_text())
