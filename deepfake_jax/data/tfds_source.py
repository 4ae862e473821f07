"""TFDS-prepared datasets as the input of training and evaluation (`config.data.tfds`).

A dataset that TensorFlow Datasets prepared in the array_record format (a catalogue dataset,
a user's own `GeneratorBasedBuilder`, or `data_prep.convert --format tfds`) is read with
`tfds.data_source` -- random access, no TensorFlow -- and each example becomes the record dict
the rest of the pipeline reads from our own ArrayRecord files (`records.py`): the ORIGINAL
encoded image bytes (TFDS image decoding skipped, so our decoder validates and reads them),
label 0 = real / 1 = fake, a path, and meta. Augmentation and evaluation are then the same.

    --config.data.tfds.name=my_faces --config.data.tfds.data_dir=/data/tfds
    [--config.data.val_split=validation] [--config.data.tfds.image_key=image]
    [--config.data.tfds.label_key=label] [--config.data.tfds.fake_class=fake]

Needs the `tfds` extra: pip install -e '.[tfds]'.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

INSTALL_HINT = "tensorflow-datasets is not installed: pip install -e '.[tfds]'"


def default_config() -> ml_collections.ConfigDict:
    """`config.data.tfds`: unset `name` = not a TFDS dataset."""
    return ml_collections.ConfigDict(dict(
        name=config_dict.placeholder(str),  # "my_faces" or "my_faces:1.0.0"
        data_dir=config_dict.placeholder(str),  # TFDS data_dir (None: TFDS's default)
        image_key="image",  # an encoded-image feature (tfds.features.Image)
        label_key="label",  # ClassLabel (or 0/1 integers)
        fake_class="fake",  # the ClassLabel name that means fake; every other name is real
        path_key=config_dict.placeholder(str),  # a Text feature naming the file (optional)
        video_key=config_dict.placeholder(str),  # a Text feature naming the video (optional)
    ))


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return tfds


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """One split of a TFDS dataset, where a list of ArrayRecord shard paths is passed
    elsewhere (`datasets.split_files`). Cheap to copy and to pickle (grain workers)."""

    name: str
    split: str
    data_dir: str | None = None
    image_key: str = "image"
    label_key: str = "label"
    fake_class: str = "fake"
    path_key: str | None = None
    video_key: str | None = None

    @classmethod
    def from_config(cls, tfds_config: ml_collections.ConfigDict, split: str) -> TfdsSplit:
        return cls(name=tfds_config.name, split=split, data_dir=tfds_config.get("data_dir"),
                   image_key=tfds_config.get("image_key", "image"),
                   label_key=tfds_config.get("label_key", "label"),
                   fake_class=tfds_config.get("fake_class", "fake"),
                   path_key=tfds_config.get("path_key"),
                   video_key=tfds_config.get("video_key"))

    def describe(self) -> str:
        return f"tfds:{self.name}[{self.split}]" + (f" in {self.data_dir}" if self.data_dir
                                                     else "")

    def source(self) -> TfdsRecords:
        return TfdsRecords(self)


class TfdsRecords:
    """A grain random-access source of record dicts ({"image": bytes, "label", "path",
    "meta"}) over `tfds.data_source`; opened in the process that reads it."""

    def __init__(self, split: TfdsSplit):
        self.split = split
        self._source = None
        self._fake_index: int | None = None
        self._length = len(self._open())

    def _open(self):
        if self._source is None:
            tfds = _tfds()
            s = self.split
            try:
                builder = tfds.builder(s.name, data_dir=s.data_dir)
            except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; say what was asked
                raise ValueError(f"config.data.tfds: no prepared TFDS dataset {s.name!r} in "
                                 f"{s.data_dir or 'the default data_dir'} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0]})") from None
            features = builder.info.features
            for key, what in ((s.image_key, "image_key"), (s.label_key, "label_key"),
                              (s.path_key, "path_key"), (s.video_key, "video_key")):
                if key is not None and key not in features:
                    raise ValueError(f"config.data.tfds.{what}={key!r} is not a feature of "
                                     f"{s.name}; features: {sorted(features)}")
            if s.split not in builder.info.splits:
                raise ValueError(f"split {s.split!r} is not in TFDS dataset {s.name}; splits: "
                                 f"{sorted(builder.info.splits)} (set config.data.train_split/"
                                 "val_split/test_split)")
            names = getattr(features[s.label_key], "names", None)
            if names:
                if len(names) != 2 or s.fake_class not in names:
                    raise ValueError(f"{s.name}: label {s.label_key!r} has classes {names}; "
                                     f"a detector needs two, one of them "
                                     f"config.data.tfds.fake_class={s.fake_class!r}")
                self._fake_index = names.index(s.fake_class)
            self._source = tfds.data_source(
                s.name, split=s.split, data_dir=s.data_dir,
                decoders={s.image_key: tfds.decode.SkipDecoding()})  # our decoder reads bytes
        return self._source

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.split
        example = self._open()[int(index)]
        label = int(example[s.label_key])
        if self._fake_index is not None:
            label = int(label == self._fake_index)
        elif label not in (0, 1):
            raise ValueError(f"{s.describe()} example {index}: label {label}; without class "
                             "names the label must be 0 (real) or 1 (fake)")
        meta = {"video": _text(example[s.video_key])} if s.video_key else {}
        path = _text(example[s.path_key]) if s.path_key else f"{s.split}[{int(index)}]"
        return {"image": example[s.image_key], "label": label, "path": path, "meta": meta}

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own reader
        return self.__dict__ | {"_source": None}
