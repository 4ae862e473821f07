"""Dataset folder layouts -> a list of labelled samples.

Layouts (`--layout`, auto-detected in this order): 140k, seed, rvf10k, ciplab (fake names give
the edited parts), videos (frames; seeded splits keep each video and each real/fake pair in
one split), generic (`<root>/[<split>/]<class>/`). Image files: .jpg .jpeg .png .webp .bmp,
found recursively and sorted; others go to `ParsedDataset.skipped`. Seeded splits are
stratified and a pure function of the seed. Details: docs/data_format.md (Module reference).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfake_jax.data.image_io import IMAGE_EXTENSIONS
from deepfake_jax.data.records import LABEL_FAKE, LABEL_REAL

LAYOUTS = ("140k", "seed", "rvf10k", "ciplab", "videos", "generic")
LAYOUT_CHOICES = ("auto",) + LAYOUTS
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "test": "test"}
CLASS_ALIASES = {
    "real": LABEL_REAL, "reals": LABEL_REAL, "real_faces": LABEL_REAL, "real_images": LABEL_REAL,
    "0": LABEL_REAL, "original_sequences": LABEL_REAL,  # FaceForensics++'s folder names
    "fake": LABEL_FAKE, "fakes": LABEL_FAKE, "fake_faces": LABEL_FAKE, "fake_images": LABEL_FAKE,
    "1": LABEL_FAKE, "manipulated_sequences": LABEL_FAKE,
}
CIPLAB_DIFFICULTIES = ("easy", "mid", "hard")
CIPLAB_REGIONS = ("left_eye", "right_eye", "nose", "mouth")
_CIPLAB_FAKE_RE = re.compile(r"^(easy|mid|hard)_(\d+)_([01]{4})$", re.IGNORECASE)
NOT_IMAGE_REASON = "not an image extension"


class LayoutError(ValueError):
    """The folder does not match the requested (or any known) layout, or holds no images."""


@dataclasses.dataclass(frozen=True)
class Sample:
    path_abs: str
    rel_path: str  # relative to the input root, '/' separated
    split: str
    label: int  # 0 real, 1 fake
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ParsedDataset:
    layout: str
    root: str  # absolute input root (what rel_path is relative to)
    base: str  # absolute folder where the layout was found
    samples: list[Sample]
    skipped: list[tuple[str, str]]  # (rel_path, reason)
    has_official_split: bool  # False: the seeded split below was applied
    split_ratios: tuple[float, float, float] | None
    split_seed: int | None
    notes: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Helpers


def _isdir(*parts: str) -> bool:
    return os.path.isdir(os.path.join(*parts))


def _subdirs(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir())
    except OSError:
        return []


def _has_all(base: str, splits: Sequence[str], classes: Sequence[str]) -> bool:
    return all(_isdir(base, s, c) for s in splits for c in classes)


def describe_tree(root: str, depth: int = 3, max_entries: int = 12) -> str:
    """A few levels of a folder, for error messages: dirs with '/', file counts summarised."""
    lines: list[str] = []

    def walk(path: str, level: int) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            lines.append("  " * level + f"<unreadable: {e.strerror}>")
            return
        dirs = [e for e in entries if e.is_dir()]
        files = [e for e in entries if not e.is_dir()]
        for d in dirs[:max_entries]:
            lines.append("  " * level + d.name + "/")
            if level + 1 < depth:
                walk(d.path, level + 1)
        if len(dirs) > max_entries:
            lines.append("  " * level + f"... {len(dirs) - max_entries} more folders")
        if files:
            shown = ", ".join(f.name for f in files[:3])
            more = f", ... ({len(files)} files)" if len(files) > 3 else ""
            lines.append("  " * level + f"[files: {shown}{more}]")

    walk(root, 0)
    return "\n".join(lines) if lines else "  (empty folder)"


def _list_files(class_dir: str, root: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(abs, rel) image files and (rel, reason) skipped files under class_dir, sorted."""
    images, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path_abs = os.path.join(dirpath, name)
            rel = os.path.relpath(path_abs, root).replace(os.sep, "/")
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                images.append((path_abs, rel))
            else:
                skipped.append((rel, NOT_IMAGE_REASON))
    images.sort(key=lambda x: x[1])
    skipped.sort()
    return images, skipped


def parse_ciplab_name(filename: str, label: int) -> dict[str, Any]:
    """CIPLab meta from a file name: fakes {"difficulty", "edited"}; reals {}."""
    if label != LABEL_FAKE:
        return {}
    m = _CIPLAB_FAKE_RE.match(os.path.splitext(os.path.basename(filename))[0])
    if not m:
        return {"difficulty": "unknown"}
    return {"difficulty": m.group(1).lower(), "edited": [int(b) for b in m.group(3)]}


def parse_split_ratios(value: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' (train, valid, test; 2 values = no test) -> a normalised 3-tuple."""
    if isinstance(value, str):
        try:
            parts = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"--split_ratios must be numbers like 0.8,0.1,0.1, got {value!r}"
            ) from None
    else:
        parts = [float(v) for v in value]
    if len(parts) == 2:
        parts.append(0.0)
    if len(parts) != 3 or any(p < 0 for p in parts) or parts[0] <= 0:
        raise ValueError(
            f"split ratios must be 2 or 3 non-negative numbers (train,valid[,test]) with "
            f"train > 0, got {value!r}"
        )
    total = sum(parts)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split ratios must sum to 1, got {value!r} (sum {total:g})")
    return (parts[0], parts[1], parts[2])


def stratified_split(
    samples: Sequence[Sample],
    ratios: Sequence[float],
    seed: int,
    strata_key=lambda s: (s.label,),
) -> list[Sample]:
    """Assigns `split` to each sample; deterministic for a given seed and sample set."""
    ratios = parse_split_ratios(ratios)
    groups: dict[Any, list[Sample]] = {}
    for s in samples:
        groups.setdefault(strata_key(s), []).append(s)
    out: list[Sample] = []
    for key in sorted(groups, key=repr):
        members = sorted(groups[key], key=lambda s: s.rel_path)
        n = len(members)
        n_valid = int(round(n * ratios[1]))
        n_test = min(int(round(n * ratios[2])), n - n_valid)
        stream = zlib.crc32(repr(key).encode())
        order = np.random.default_rng(np.random.SeedSequence([seed, stream])).permutation(n)
        for rank, j in enumerate(order):
            split = "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
            out.append(dataclasses.replace(members[j], split=split))
    out.sort(key=lambda s: s.rel_path)
    return out


# ------------------------------------------------------------------------------------------
# Layout matchers: return the folder where the layout lives, or None.


def _match_140k(root: str) -> str | None:
    for base in (os.path.join(root, "real_vs_fake", "real-vs-fake"),
                 os.path.join(root, "real-vs-fake"), root):
        if _has_all(base, SPLITS, ("real", "fake")):
            return base
    return None


def _match_seed(root: str) -> str | None:
    return root if _has_all(root, SPLITS, ("real_faces", "fake_faces")) else None


def _match_rvf10k(root: str) -> str | None:
    candidates = [os.path.join(root, "rvf10k")]
    if os.path.basename(os.path.normpath(root)).lower() == "rvf10k":
        candidates.insert(0, root)
    for base in candidates:
        if _has_all(base, ("train", "valid"), ("real", "fake")):
            return base
    return None


def _match_ciplab(root: str) -> str | None:
    for base in (os.path.join(root, "real_and_fake_face"),
                 os.path.join(root, "real_and_fake_face_detection", "real_and_fake_face"), root):
        if _has_all(base, ("",), ("training_real", "training_fake")):
            return base
    return None


def _generic_dirs(root: str) -> dict[str, dict[int, list[str]]] | None:
    """{split or '': {label: [class dirs]}} for the generic layout, or None."""

    def classes_in(path: str) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for name in _subdirs(path):
            label = CLASS_ALIASES.get(name.lower())
            if label is not None:
                found.setdefault(label, []).append(os.path.join(path, name))
        return found

    split_dirs: dict[str, dict[int, list[str]]] = {}
    for name in _subdirs(root):
        split = SPLIT_ALIASES.get(name.lower())
        if split is None:
            continue
        if split in split_dirs:
            raise LayoutError(
                f"{root}: more than one folder maps to split {split!r} "
                f"(aliases {sorted(k for k, v in SPLIT_ALIASES.items() if v == split)})"
            )
        classes = classes_in(os.path.join(root, name))
        if classes:
            split_dirs[split] = classes
    if split_dirs:
        return split_dirs
    classes = classes_in(root)
    return {"": classes} if classes else None


def _match_generic(root: str) -> str | None:
    return root if _generic_dirs(root) else None


def _holds_only_videos(class_dir: str) -> bool:
    """True when `class_dir` has sub-folders and no image file directly in it."""
    try:
        entries = list(os.scandir(class_dir))
    except OSError:
        return False
    direct = [e for e in entries if e.is_file()
              and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    return not direct and any(e.is_dir() for e in entries)


def _match_videos(root: str) -> str | None:
    found = _generic_dirs(root)
    dirs = [d for classes in (found or {}).values() for ds in classes.values() for d in ds]
    return root if dirs and all(_holds_only_videos(d) for d in dirs) else None


def video_sources(video_name: str) -> list[str]:
    """The source numbers a video folder name stands for: FF++ `000_003` -> ['000', '003'];
    any other name is its own single source."""
    parts = video_name.split("_")
    return parts if len(parts) > 1 and all(p.isdigit() for p in parts) else [video_name]


def video_groups(video_names: Sequence[str]) -> dict[str, str]:
    """{video folder name: group}: names that share a source number are joined (union-find);
    a group is named by its smallest source."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for name in video_names:
        sources = video_sources(name)
        for other in sources[1:]:
            a, b = find(sources[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {name: find(video_sources(name)[0]) for name in video_names}


def group_split(samples: Sequence[Sample], ratios: Sequence[float], seed: int) -> list[Sample]:
    """`stratified_split` of whole groups (meta "group"), stratified by the classes a group
    holds: every frame of a group lands in the same split."""
    members: dict[str, list[Sample]] = {}
    for s in samples:
        members.setdefault(s.meta["group"], []).append(s)
    # one stand-in sample per group, stratified by the set of labels in it
    stand_ins = [Sample("", group, "", max(s.label for s in ms),
                        {"classes": tuple(sorted({s.label for s in ms}))})
                 for group, ms in members.items()]
    placed = stratified_split(stand_ins, ratios, seed,
                              strata_key=lambda s: s.meta["classes"])
    split_of = {g.rel_path: g.split for g in placed}
    out = [dataclasses.replace(s, split=split_of[s.meta["group"]]) for s in samples]
    out.sort(key=lambda s: s.rel_path)
    return out


def groups_across_splits(samples: Sequence[Sample]) -> dict[str, list[str]]:
    """{group: its splits} for the groups found in more than one split (a leak)."""
    splits: dict[str, set[str]] = {}
    for s in samples:
        if "group" in s.meta:
            splits.setdefault(s.meta["group"], set()).add(s.split)
    return {g: sorted(v) for g, v in sorted(splits.items()) if len(v) > 1}


_MATCHERS = {"140k": _match_140k, "seed": _match_seed, "rvf10k": _match_rvf10k,
             "ciplab": _match_ciplab, "videos": _match_videos, "generic": _match_generic}


def _layout_help(root: str) -> str:
    return (
        f"Found under {root}:\n{describe_tree(root)}\n"
        f"Choose --layout from {', '.join(LAYOUT_CHOICES)}; expected structures:\n"
        "  140k:    [real_vs_fake/real-vs-fake/]{train,valid,test}/{real,fake}/\n"
        "  seed:    {train,valid,test}/{real_faces,fake_faces}/\n"
        "  rvf10k:  [rvf10k/]{train,valid}/{real,fake}/\n"
        "  ciplab:  [real_and_fake_face/]{training_real,training_fake}/\n"
        "  videos:  [<split>/]<class>/<video>/<frames> (class and split names as in generic)\n"
        "  generic: [<split>/]<class>/ with split in train|valid|val|validation|test and class in "
        "real|reals|real_faces|real_images|0 / fake|fakes|fake_faces|fake_images|1 "
        "(case-insensitive)"
    )


def detect_layout(root: str) -> str:
    """The first layout in LAYOUTS order that matches `root`; LayoutError if none does."""
    if not os.path.isdir(root):
        raise LayoutError(f"input folder {root!r} does not exist or is not a folder")
    for name in LAYOUTS:
        if _MATCHERS[name](root) is not None:
            return name
    raise LayoutError(f"{root}: no known dataset layout.\n{_layout_help(root)}")


# ------------------------------------------------------------------------------------------
# Parsing


def parse_dataset(
    root: str,
    layout: str = "auto",
    split_ratios: str | Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> ParsedDataset:
    """Lists the labelled samples of a dataset folder (see the module docstring)."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise LayoutError(f"input folder {root!r} does not exist or is not a folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in _MATCHERS:
        raise LayoutError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUT_CHOICES)}")
    base = _MATCHERS[layout](root)
    if base is None:
        raise LayoutError(f"{root} does not look like layout {layout!r}.\n{_layout_help(root)}")

    # (split or None, label, class_dir)
    class_dirs: list[tuple[str | None, int, str]] = []
    if layout == "140k":
        class_dirs = [(s, lab, os.path.join(base, s, c)) for s in SPLITS
                      for lab, c in ((LABEL_REAL, "real"), (LABEL_FAKE, "fake"))]
    elif layout == "seed":
        class_dirs = [(s, lab, os.path.join(base, s, c)) for s in SPLITS
                      for lab, c in ((LABEL_REAL, "real_faces"), (LABEL_FAKE, "fake_faces"))]
    elif layout == "rvf10k":
        splits = [s for s in SPLITS if _has_all(base, (s,), ("real", "fake"))]
        class_dirs = [(s, lab, os.path.join(base, s, c)) for s in splits
                      for lab, c in ((LABEL_REAL, "real"), (LABEL_FAKE, "fake"))]
    elif layout == "ciplab":
        class_dirs = [(None, LABEL_REAL, os.path.join(base, "training_real")),
                      (None, LABEL_FAKE, os.path.join(base, "training_fake"))]
    else:  # generic, videos
        found = _generic_dirs(base) or {}
        for split, classes in sorted(found.items()):
            for label, dirs in sorted(classes.items()):
                for d in dirs:
                    class_dirs.append((split or None, label, d))

    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    empty: list[str] = []
    for split, label, d in class_dirs:
        images, skip = _list_files(d, root)
        skipped.extend(skip)
        if not images:
            empty.append(os.path.relpath(d, root))
        for path_abs, rel in images:
            meta = parse_ciplab_name(rel, label)
            if layout != "ciplab" and meta.get("difficulty") == "unknown":
                meta = {}  # generic folders: keep CIPLab meta only for CIPLab-style names
            if layout == "videos":  # the frame's folder is its video (name below the class)
                video_dir = os.path.dirname(os.path.relpath(path_abs, d)).replace(os.sep, "/")
                meta = {"video": f"{os.path.basename(d)}/{video_dir}"}
            samples.append(Sample(path_abs, rel, split or "", label, meta))
    if not samples:
        raise LayoutError(
            f"{root} (layout {layout!r}) holds no image files "
            f"({', '.join(IMAGE_EXTENSIONS)}); empty class folders: {empty}.\n{describe_tree(root)}"
        )
    for e in empty:
        notes.append(f"class folder {e} holds no images")
    labels = {s.label for s in samples}
    if labels != {LABEL_REAL, LABEL_FAKE}:
        only = "real" if labels == {LABEL_REAL} else "fake"
        notes.append(f"only {only} images were found: a detector cannot learn from one class")

    if layout == "videos":
        names = {s.meta["video"]: s.meta["video"].rsplit("/", 1)[-1] for s in samples}
        group_of = video_groups(sorted(set(names.values())))
        samples = [dataclasses.replace(s, meta={**s.meta, "group": group_of[names[s.meta[
            "video"]]]}) for s in samples]
    has_split = all(s.split for s in samples)
    ratios: tuple[float, float, float] | None = None
    seed: int | None = None
    if not has_split:
        ratios = parse_split_ratios(split_ratios)
        seed = int(split_seed)
        if layout == "videos":
            samples = group_split(samples, ratios, seed)
            notes.append(f"no official split: seeded split of whole video groups (a video and "
                         f"the real/fake videos sharing its source), ratios {ratios}, seed {seed}")
        else:
            key = lambda s: (s.label, s.meta.get("difficulty", ""))  # noqa: E731
            samples = stratified_split(samples, ratios, seed, strata_key=key)
            notes.append(
                f"no official split: seeded stratified split, ratios {ratios}, seed {seed}"
            )
    crossing = groups_across_splits(samples)
    if crossing:
        shown = ", ".join(f"{g} {v}" for g, v in list(crossing.items())[:5])
        notes.append(f"{len(crossing)} video group(s) are in more than one split folder "
                     f"(frames of one source on both sides leak): {shown}")
    samples.sort(key=lambda s: (SPLITS.index(s.split), s.rel_path))
    return ParsedDataset(layout=layout, root=root, base=base, samples=samples, skipped=skipped,
                         has_official_split=has_split, split_ratios=ratios, split_seed=seed,
                         notes=notes)
