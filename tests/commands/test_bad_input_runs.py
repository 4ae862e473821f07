"""Bad input never costs a finished run: a failed rerun leaves the run usable, bad data and bad
flags are refused up front with one line, and evaluate never overwrites one dataset's results
with another's. Destructive cases work on copies of the session's tiny trained run."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def run_copy(trained_workdir, tmp_path):
    """A copy of the tiny trained run (the session's own stays untouched)."""
    workdir, _ = trained_workdir
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return copy


def _config(data_dir, **overrides):
    from configs import default

    config = default.get_config("tiny")
    config.data.dir = data_dir
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------- defect 1


def test_a_failed_rerun_leaves_the_finished_run_usable(run_copy, tiny_dataset):
    from deepfake_jax import evaluate, runs, tasks
    from deepfake_jax.training import checkpointing

    configs_before = sorted(os.listdir(run_copy))
    with pytest.raises(checkpointing.CheckpointError) as raised:
        tasks.train_and_evaluate(_config(tiny_dataset, **{"model.variant": "18"}), run_copy)
    message = _one_line(str(raised.value))
    assert "checkpoints/" in message and "config.model differ from config.json's" in message
    assert "delete" not in message.lower()
    assert sorted(os.listdir(run_copy)) == configs_before, "the failed rerun wrote something"

    # A config written by such a rerun (as older versions did) is not used to load the run:
    # every checkpoint names the config of the run that saved it.
    with open(os.path.join(run_copy, "config.json")) as f:
        bad = json.load(f)
    bad["model"]["variant"] = "18"
    with open(os.path.join(run_copy, "config.1.json"), "w") as f:
        json.dump(bad, f)
    assert runs.load_run_config(run_copy).model.variant == "tiny"
    assert runs.load_run_config(run_copy, "best").model.variant == "tiny"
    assert runs.load_run_config(run_copy, None).model.variant == "18"  # the newest file
    results = evaluate.evaluate_checkpoint(run_copy, bootstrap=0)
    assert next(iter(results.values()))["roc_auc"] > 0
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    # whatever config a caller passes, the model is rebuilt from the checkpoint's own
    _, state, step = runs.restore_weights(ml_collections.ConfigDict(bad), run_copy, "best",
                                            mesh)
    assert state is not None and step > 0


def test_checkpoints_name_their_config_and_old_ones_fall_back_to_file_times(run_copy):
    from deepfake_jax import runs
    from deepfake_jax.training import checkpointing, metric_writer

    config = runs.load_run_config(run_copy)
    ckpt = checkpointing.open_run(run_copy, config)
    try:
        steps = ckpt.all_steps()
        assert {ckpt.saved_by(s)[0] for s in steps} == {"config.json"}
        # a checkpoint from before configs were named: the newest config older than the save
        meta_path = os.path.join(run_copy, "checkpoints", str(steps[-1]), "_CHECKPOINT_METADATA")
        with open(meta_path) as f:
            meta = json.load(f)
        meta["custom_metadata"] = {}
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        later = os.path.join(run_copy, "config.1.json")
        shutil.copy(os.path.join(run_copy, "config.json"), later)
        saved_at = meta["init_timestamp_nsecs"] / 1e9
        os.utime(os.path.join(run_copy, "config.json"), (saved_at - 5, saved_at - 5))
        os.utime(later, (saved_at + 5, saved_at + 5))
        assert metric_writer.config_for_step(run_copy, ckpt, steps[-1]) == "config.json"
    finally:
        ckpt.close()


# ----------------------------------------------------------------------------- defect 3


def test_evaluate_keeps_datasets_with_the_same_folder_name_apart(run_copy, tiny_dataset, tmp_path,
                                                                 capsys):
    from deepfake_jax import evaluate, runs

    copies = []
    for run in ("run1", "run2"):
        target = tmp_path / run / "data" / "arrayrecord"
        shutil.copytree(tiny_dataset, target)
        copies.append(str(target))
    results = evaluate.evaluate_checkpoint(run_copy, bootstrap=0,
                                           data=[copies[0], copies[1], copies[0]])
    assert sorted(results) == ["run1_data_arrayrecord", "run2_data_arrayrecord"]
    for name, m in results.items():
        assert m["dataset"] in copies
        assert os.path.exists(os.path.join(run_copy, "eval", name, "test", "metrics.json"))
    names = evaluate.dataset_names(runs.load_run_config(run_copy), "own",
                                   ["own", "/x/a/b", "/y/a/b", "/z/c"])
    assert [n for n, _ in names] == ["own", "x_a_b", "y_a_b", "c"]


# ----------------------------------------------------------------------------- defects 6, 7


@pytest.fixture(scope="module")
def face_images(tmp_path_factory):
    """Generated real/fake faces in a plain real/ + fake/ folder pair (no splits)."""
    from data_prep import synthetic

    root = tmp_path_factory.mktemp("faces")
    synthetic.generate_140k(str(root / "gen"), counts={"train": 40}, image_size=32,
                            difficulty=0.0, seed=0)
    flat = root / "flat"
    for label in ("real", "fake"):
        (flat / label).mkdir(parents=True)
        for path in glob.glob(str(root / "gen" / "train" / label / "*.jpg")):
            os.rename(path, flat / label / os.path.basename(path))
    return str(flat)


def _convert(images, out, ratios):
    from data_prep import convert

    convert.convert(images, out, layout="generic", split_ratios=ratios, show_progress=False,
                    log=lambda _m: None)
    return out


def test_one_class_training_data_is_refused_before_training(face_images, tmp_path):

    from deepfake_jax import tasks
    only_real = tmp_path / "only_real"
    shutil.copytree(os.path.join(face_images, "real"), only_real / "real")
    os.makedirs(only_real / "fake")
    data = _convert(str(only_real), str(tmp_path / "only_real_ar"), "0.5,0.25,0.25")
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="has no fake images") as raised:
        tasks.train_and_evaluate(_config(data), str(workdir))
    _one_line(str(raised.value))
    assert not os.path.exists(workdir / "checkpoints") and not os.path.exists(
        workdir / "config.json")


def test_one_class_test_split_and_missing_splits_are_checked_up_front(tiny_dataset, tmp_path,
                                                                      caplog):
    from deepfake_jax.data import datasets, records

    data = tmp_path / "ar"
    shutil.copytree(tiny_dataset, data)
    manifest_path = data / records.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["test"]["counts"] = {"real": 16, "fake": 0}
    manifest_path.write_text(json.dumps(manifest))
    config = _config(str(data))
    with caplog.at_level("WARNING"):
        assert datasets.check_classification_splits(config, str(data)) == ["valid", "test"]
    assert "has no fake images" in caplog.text
    manifest["splits"]["valid"]["counts"] = {"real": 0, "fake": 16}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="'valid' split .* has no real images"):
        datasets.check_classification_splits(config, str(data))
    del manifest["splits"]["valid"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no 'valid' split"):
        datasets.check_classification_splits(config, str(data))


def test_a_dataset_without_test_split_trains_and_evaluates_what_exists(face_images, tmp_path,
                                                                        caplog):
    """The README's `--split_ratios 0.9,0.1`: no test split. Training used to end in a
    KeyError in the final evaluation, after the whole run."""

    from deepfake_jax import tasks
    data = _convert(face_images, str(tmp_path / "ar"), "0.8,0.2")
    workdir = str(tmp_path / "run")
    with caplog.at_level("WARNING"):
        summary = tasks.train_and_evaluate(_config(data, num_train_steps=2, eval_every_steps=2),
                                           workdir)
    assert "has no 'test' split" in caplog.text
    assert summary["step"] == 2 and sorted(summary["eval"]) == ["valid"]
    assert os.path.exists(os.path.join(workdir, "eval", "valid", "metrics.json"))


def test_a_face_parsing_dataset_without_test_split_is_checked_up_front(tmp_path, caplog):
    from configs import bisenet_face_parsing
    from deepfake_jax.data import records
    from deepfake_jax.tasks import segmentation

    data = tmp_path / "parsing"
    data.mkdir()
    manifest = {"format_version": records.FORMAT_VERSION, "task": "segmentation",
                "splits": {"train": {"files": []}, "valid": {"files": []}}}
    (data / records.MANIFEST_NAME).write_text(json.dumps(manifest))
    config = bisenet_face_parsing.get_config("tiny")
    config.data.dir = str(data)
    task = segmentation.SegmentationTask(config)
    with caplog.at_level("WARNING"):
        task.prepare_data(str(tmp_path / "run"))
    assert task.eval_splits == ["valid"] and "has no 'test' split" in caplog.text
    config.data.val_split = "validation"
    with pytest.raises(ValueError, match="no 'validation' split"):
        segmentation.SegmentationTask(config).prepare_data(str(tmp_path / "run"))


# ----------------------------------------------------------------------------- defect 9


def test_trainer_refuses_bad_batch_sizes_and_workdirs_before_any_data(tmp_path):

    from deepfake_jax import tasks
    workdir = tmp_path / "run"  # the built-in synthetic data: nothing may be generated
    for batch, expected in ((-16, "must be a positive number"), (0, "must be a positive"),
                            (10_000, "larger than the 96 generated training images")):
        with pytest.raises(ValueError, match=expected) as raised:
            tasks.train_and_evaluate(_config(None, **{"input.batch_size": batch}), str(workdir))
        _one_line(str(raised.value))
        assert not os.path.exists(workdir / "data")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        tasks.train_and_evaluate(_config(None), str(a_file))
    with pytest.raises(FileNotFoundError, match="not a converted dataset"):
        tasks.train_and_evaluate(_config(str(tmp_path / "nowhere")), str(workdir))
    assert not os.path.exists(workdir / "config.json")


def _evaluate_cli(args):
    """`python -m deepfake_jax.evaluate ARGS` in this process: (exit code, message)."""
    from deepfake_jax import evaluate

    try:
        return evaluate.main(list(args)), ""
    except SystemExit as e:
        return (1 if isinstance(e.code, str) else e.code), str(e.code)


def test_evaluate_errors_are_one_line(run_copy, tmp_path):
    from deepfake_jax import runs, tasks

    no_checkpoint = tmp_path / "fresh"
    no_checkpoint.mkdir()
    shutil.copy(os.path.join(run_copy, "config.json"), no_checkpoint)
    unconverted = tmp_path / "images"
    unconverted.mkdir()
    cases = [
        (["--workdir", str(tmp_path / "missing")], "does not exist"),
        (["--workdir", str(no_checkpoint)], "no checkpoint in"),
        (["--workdir", run_copy, "--checkpoint", "999999"], "use latest, best or one of"),
        (["--workdir", run_copy, "--split", "nope"], "split 'nope' not in"),
        (["--workdir", run_copy, "--data", str(unconverted)], "is not a converted dataset"),
    ]
    for args, expected in cases:
        code, message = _evaluate_cli([*args, "--bootstrap", "0"])
        assert code != 0 and expected in _one_line(message), (args, message)

    latest = max(int(s) for s in os.listdir(os.path.join(run_copy, "checkpoints"))
                 if s.isdigit())
    for path in glob.glob(os.path.join(run_copy, "checkpoints", str(latest), "state", "**",
                                       "d", "*"), recursive=True):
        with open(path, "r+b") as f:
            f.truncate(10)
    where = f"could not restore checkpoint step {latest} ({run_copy}/checkpoints/{latest})"
    code, message = _evaluate_cli(["--workdir", run_copy, "--bootstrap", "0"])
    assert code != 0 and where in _one_line(message), message
    assert "delete" not in message.lower()

    with pytest.raises(ValueError, match=rf"look damaged: to resume from step \d+, move the "
                       rf"folder {run_copy}/checkpoints/{latest} out of"):
        tasks.train_and_evaluate(runs.load_run_config(run_copy, None), run_copy)
    _damaged_checkpoint_in_predict_export_and_the_app(run_copy, where, tmp_path)


def _damaged_checkpoint_in_predict_export_and_the_app(run_copy, where, tmp_path):
    from data_prep import synthetic
    from deepfake_jax import export, predict, runs
    from deepfake_jax.inference import scoring
    from deepfake_jax.training import checkpointing

    with pytest.raises(SystemExit) as raised:  # export's CLI
        export.main(["--workdir", run_copy, "--output", str(tmp_path / "model.jaxexport")])
    assert where in _one_line(str(raised.value.code))
    # predict's scorer, which the web app's LoadedRun uses too (its CLI prints `error: ...`)
    with pytest.raises(checkpointing.CheckpointError) as raised:
        scoring.Scorer(runs.load_run_config(run_copy), run_copy, "latest", True, 8, None)
    assert isinstance(raised.value, ValueError) and where in _one_line(str(raised.value))
    folder = tmp_path / "to_score"
    folder.mkdir()
    synthetic.generate_140k(str(folder), counts={"test": 1}, image_size=32, seed=3)
    with pytest.raises(SystemExit) as raised:
        predict.main(["--workdir", run_copy, "--output", str(tmp_path / "p.csv"), "--recursive",
                      str(folder)])
    assert where in _one_line(str(raised.value.code))


def test_main_prints_one_line_for_a_workdir_that_is_a_file(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    run = subprocess.run([sys.executable, "-m", "deepfake_jax.main", "--config",
                          "configs/default.py:tiny", "--workdir", str(a_file)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DEEPFAKE_JAX_NO_HUGE_PAGES": "1"})
    assert run.returncode == 1, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: --workdir") and "is a file" in lines[-1]
    assert "Traceback" not in run.stderr


# ----------------------------------------------------------------------------- defect 10


@pytest.mark.parametrize("srun_exit, requeued", [("exit 75", True), ("exit 0", False),
                                                 ("exit 1", False), ("term", True)])
def test_slurm_launcher_requeues_a_halted_run(tmp_path, srun_exit, requeued):
    """scripts/slurm_train.sbatch with stand-ins for srun and scontrol: exit status 75 (a
    halted run) requeues the job; SIGTERM to the batch shell reaches the training command."""
    import signal
    import time

    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    bin_dir.mkdir()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    body = ("trap 'exit 75' TERM; touch started; while true; do sleep 0.05; done"
            if srun_exit == "term" else srun_exit)
    (bin_dir / "srun").write_text(f"#!/bin/bash\n{body}\n")
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/scontrol\n")
    for tool in ("srun", "scontrol"):
        os.chmod(bin_dir / tool, 0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VENV": str(venv),
           "SLURM_JOB_ID": "123"}
    job = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "slurm_train.sbatch"),
                            "configs/default.py", "runs/x"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        if srun_exit == "term":
            deadline = time.time() + 30
            while not (tmp_path / "started").exists() and time.time() < deadline:
                time.sleep(0.05)
            job.send_signal(signal.SIGTERM)
        out, _ = job.communicate(timeout=60)
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)  # a stand-in left behind, if any
        except ProcessLookupError:
            pass
    expected = 75 if requeued else int(srun_exit.split()[1])
    assert job.returncode == expected, out
    scontrol = tmp_path / "scontrol"
    assert scontrol.exists() == requeued, out
    if requeued:
        assert scontrol.read_text().split() == ["requeue", "123"]
