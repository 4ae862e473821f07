"""The data report of a converted dataset: report.json, report.md, color_histograms.png.

Contents: class balance per split; decoded image sizes, colour modes, file formats (overall and
per class, with a warning when a property separates the classes: a detector would learn the
shortcut); images flagged for non-RGB / 16-bit modes; extension/format mismatches; skipped files
with reasons; exact duplicates (same sha256) within a split and across splits (leakage), and
duplicates carrying both labels; CIPLab difficulty / edited-region counts when present; per-class
per-channel colour histograms from a capped random sample of images.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfake_jax import json_io
from deepfake_jax.data.records import CLASS_NAMES

REPORT_FILES = ("report.json", "report.md", "color_histograms.png")
MAX_LISTED = 1000  # groups / files listed in report.json (counts are always complete)
MAX_MD = 15  # rows listed in report.md
SHORTCUT_TV = 0.5  # total-variation distance between classes that triggers a warning


def _mode_label(r: dict[str, Any]) -> str:
    return r["mode"] + (f" {r['bit_depth']}-bit" if r.get("bit_depth", 8) > 8 else "")


def _counts(items: Sequence[Any]) -> dict[str, int]:
    return {str(k): v for k, v in collections.Counter(items).most_common()}


def _by_class(kept: Sequence[dict[str, Any]], key) -> dict[str, dict[str, int]]:
    out = {"all": _counts([key(r) for r in kept])}
    for label, name in enumerate(CLASS_NAMES):
        out[name] = _counts([key(r) for r in kept if r["label"] == label])
    return out


def _tv_distance(a: dict[str, int], b: dict[str, int]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in keys)


def _skip_category(reason: str) -> str:
    return reason.split(" (")[0]


def find_duplicates(kept: Sequence[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in kept:
        groups[r["sha256"]].append(r)
    within, cross, conflicts = [], [], []
    extra_within = 0
    for sha, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        entries = [{"split": m["split"], "path": m["path"], "label": CLASS_NAMES[m["label"]]}
                   for m in sorted(members, key=lambda m: (m["split"], m["path"]))]
        per_split = collections.Counter(m["split"] for m in members)
        for split, n in sorted(per_split.items()):
            if n > 1:
                extra_within += n - 1
                within.append({"sha256": sha, "split": split,
                               "paths": [e["path"] for e in entries if e["split"] == split],
                               "labels": sorted({e["label"] for e in entries
                                                 if e["split"] == split})})
        if len(per_split) > 1:
            cross.append({"sha256": sha, "splits": sorted(per_split), "entries": entries})
        if len({m["label"] for m in members}) > 1:
            conflicts.append({"sha256": sha, "entries": entries})
    return {
        "within_split": {"num_groups": len(within), "num_extra_copies": extra_within,
                         "groups": within[:MAX_LISTED]},
        "cross_split": {"num_groups": len(cross), "groups": cross[:MAX_LISTED]},
        "label_conflicts": {"num_groups": len(conflicts), "groups": conflicts[:MAX_LISTED]},
    }


def _ciplab_stats(kept: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    fakes = [r for r in kept if "difficulty" in r["meta"]]
    if not fakes:
        return None
    regions = ("left_eye", "right_eye", "nose", "mouth")
    per_split: dict[str, dict[str, int]] = {}
    for r in fakes:
        d = per_split.setdefault(r["split"], {})
        d[r["meta"]["difficulty"]] = d.get(r["meta"]["difficulty"], 0) + 1
    edited = [r["meta"]["edited"] for r in fakes if "edited" in r["meta"]]
    return {
        "difficulty": _counts([r["meta"]["difficulty"] for r in fakes]),
        "difficulty_per_split": per_split,
        "edited_regions": {name: int(sum(e[i] for e in edited)) for i, name in enumerate(regions)},
        "num_regions_edited": _counts([sum(e) for e in edited]),
        "unparsed_names": sum(1 for r in fakes if r["meta"]["difficulty"] == "unknown"),
    }


def _video_stats(kept: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Videos, frames and groups per split (video-frame layouts), and the groups found in more
    than one split: frames of one source on both sides of a split leak."""
    frames = [r for r in kept if "video" in r["meta"]]
    if not frames:
        return None
    per_split: dict[str, dict[str, Any]] = {}
    group_splits: dict[str, set[str]] = collections.defaultdict(set)
    for r in frames:
        group_splits[r["meta"].get("group", r["meta"]["video"])].add(r["split"])
    order = {"train": 0, "valid": 1, "test": 2}
    for split in sorted({r["split"] for r in frames}, key=lambda s: (order.get(s, 3), s)):
        rows = [r for r in frames if r["split"] == split]
        videos = {(r["label"], r["meta"]["video"]) for r in rows}
        per_split[split] = {
            "videos": {name: sum(1 for lab, _ in videos if lab == i)
                       for i, name in enumerate(CLASS_NAMES)},
            "frames": {name: sum(1 for r in rows if r["label"] == i)
                       for i, name in enumerate(CLASS_NAMES)},
            "groups": len({r["meta"].get("group", r["meta"]["video"]) for r in rows}),
        }
    crossing = [{"group": g, "splits": sorted(v)} for g, v in sorted(group_splits.items())
                if len(v) > 1]
    return {"per_split": per_split,
            "num_videos": len({r["meta"]["video"] for r in frames}),
            "num_frames": len(frames), "num_groups": len(group_splits),
            "groups_across_splits": {"count": len(crossing), "groups": crossing[:MAX_LISTED]}}


def build_report(
    manifest: dict[str, Any],
    kept: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    hist_counts: dict[int, int] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The report as a JSON-able dict. `kept`: one dict per record with split, label, path,
    sha256, meta, width, height, mode, format, bit_depth, orientation, num_bytes."""
    balance: dict[str, Any] = {}
    for split in list(manifest["splits"]) + ["all"]:
        rows = [r for r in kept if split == "all" or r["split"] == split]
        c = collections.Counter(r["label"] for r in rows)
        balance[split] = {name: c.get(i, 0) for i, name in enumerate(CLASS_NAMES)}
        balance[split]["total"] = len(rows)
        balance[split]["fake_fraction"] = round(c.get(1, 0) / len(rows), 4) if rows else None

    sizes = _by_class(kept, lambda r: f"{r['width']}x{r['height']}")
    modes = _by_class(kept, _mode_label)
    formats = _by_class(kept, lambda r: r["format"])

    flagged: dict[str, dict[str, Any]] = {}
    for r in kept:
        label = _mode_label(r)
        if label != "RGB":
            f = flagged.setdefault(label, {"count": 0, "examples": []})
            f["count"] += 1
            if len(f["examples"]) < MAX_LISTED:
                f["examples"].append(r["path"])

    ext_names = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}
    mismatch = [{"path": r["path"], "format": r["format"]} for r in kept
                if ext_names.get(os.path.splitext(r["path"])[1][1:].lower()) not in
                (r["format"], None) and not (r["format"] == "MPO"
                                             and r["path"].lower().endswith((".jpg", ".jpeg")))]
    rotated = [r["path"] for r in kept if r.get("orientation", 1) not in (1, 0)]

    file_kb = {}
    for label, name in enumerate(CLASS_NAMES):
        b = np.array([r["num_bytes"] for r in kept if r["label"] == label], np.float64)
        if b.size:
            file_kb[name] = {"min": round(b.min() / 1024, 1), "median": round(
                float(np.median(b)) / 1024, 1), "max": round(b.max() / 1024, 1)}

    warnings = []
    for what, table in (("image size", sizes), ("colour mode", modes), ("file format", formats)):
        tv = _tv_distance(table["real"], table["fake"])
        if tv > SHORTCUT_TV:
            warnings.append(
                f"{what} distributions of real and fake differ strongly (total variation "
                f"{tv:.2f}): a detector can learn this shortcut; real {table['real']}, "
                f"fake {table['fake']}"
            )

    by_reason = _counts([_skip_category(s["reason"]) for s in skipped])
    duplicates = find_duplicates(kept)
    if duplicates["cross_split"]["num_groups"]:
        warnings.append(
            f"{duplicates['cross_split']['num_groups']} identical file(s) appear in more than one "
            "split (train/test leakage)"
        )
    videos = _video_stats(kept)
    if videos and videos["groups_across_splits"]["count"]:
        warnings.append(
            f"{videos['groups_across_splits']['count']} video group(s) have frames in more than "
            "one split (frames of one source on both sides: train/test leakage)")
    if duplicates["label_conflicts"]["num_groups"]:
        warnings.append(
            f"{duplicates['label_conflicts']['num_groups']} identical file(s) carry both labels"
        )
    return {
        "dataset": {k: manifest.get(k) for k in ("input", "layout", "created", "split_source",
                                                  "split_seed", "split_ratios")},
        "num_records": len(kept),
        "class_balance": balance,
        "image_sizes": sizes,
        "colour_modes": modes,
        "formats": formats,
        "flagged_modes": flagged,
        "extension_mismatch": {"count": len(mismatch), "examples": mismatch[:MAX_LISTED]},
        "exif_rotated": {"count": len(rotated), "examples": rotated[:MAX_LISTED]},
        "file_size_kb": file_kb,
        "skipped": {"count": len(skipped), "by_reason": by_reason, "files": list(skipped)},
        "duplicates": duplicates,
        "ciplab": _ciplab_stats(kept),
        "videos": videos,
        "color_histograms": {"file": "color_histograms.png",
                             "images_per_class": {CLASS_NAMES[k]: v
                                                  for k, v in (hist_counts or {}).items()}},
        "warnings": warnings,
        "notes": list(notes),
    }


def render_markdown(rep: dict[str, Any]) -> str:
    d = rep["dataset"]
    out = [f"# Data report: {d['input']}", "",
           f"Layout `{d['layout']}`, created {d['created']}, split: {d['split_source']}"
           + (f" (ratios {d['split_ratios']}, seed {d['split_seed']})"
              if d["split_source"] != "folders" else ""), ""]
    if rep["warnings"]:
        out += ["## Warnings", ""] + [f"- {w}" for w in rep["warnings"]] + [""]
    out += ["## Class balance", "", "| split | real | fake | total | fake fraction |",
            "|---|---|---|---|---|"]
    for split, b in rep["class_balance"].items():
        out.append(f"| {split} | {b['real']} | {b['fake']} | {b['total']} | {b['fake_fraction']} |")

    def top(table: dict[str, int]) -> str:
        items = list(table.items())
        s = ", ".join(f"{k}: {v}" for k, v in items[:6])
        return s + (f", ... ({len(items)} values)" if len(items) > 6 else "")

    out += ["", "## Images", ""]
    for title, key in (("Sizes (decoded WxH)", "image_sizes"), ("Colour modes", "colour_modes"),
                       ("Formats", "formats")):
        t = rep[key]
        out.append(f"- {title}: real {{{top(t['real'])}}}; fake {{{top(t['fake'])}}}")
    if rep["file_size_kb"]:
        out.append("- File size KB (min/median/max): " + "; ".join(
            f"{k} {v['min']}/{v['median']}/{v['max']}" for k, v in rep["file_size_kb"].items()))
    for mode, f in rep["flagged_modes"].items():
        out.append(f"- Flagged mode {mode}: {f['count']} (kept; read as RGB), e.g. "
                   + ", ".join(f["examples"][:3]))
    if rep["extension_mismatch"]["count"]:
        out.append(f"- Extension does not match format: {rep['extension_mismatch']['count']}")
    if rep["exif_rotated"]["count"]:
        out.append(f"- EXIF-rotated (decoded upright): {rep['exif_rotated']['count']}")
    out.append(f"- Colour histograms: color_histograms.png "
               f"({rep['color_histograms']['images_per_class']} images)")

    sk = rep["skipped"]
    out += ["", f"## Skipped files: {sk['count']}", ""]
    if sk["count"]:
        out += [f"- {reason}: {n}" for reason, n in sk["by_reason"].items()] + [""]
        out += ["| file | reason |", "|---|---|"]
        out += [f"| {s['path']} | {s['reason']} |" for s in sk["files"][:MAX_MD]]
        if sk["count"] > MAX_MD:
            out.append(f"| ... | {sk['count'] - MAX_MD} more in report.json |")

    dup = rep["duplicates"]
    out += ["", "## Exact duplicates (sha256)", "",
            f"- within a split: {dup['within_split']['num_groups']} groups "
            f"({dup['within_split']['num_extra_copies']} extra copies)",
            f"- across splits (leakage): {dup['cross_split']['num_groups']} groups",
            f"- with both labels: {dup['label_conflicts']['num_groups']} groups"]
    for g in dup["cross_split"]["groups"][:MAX_MD]:
        out.append("  - " + ", ".join(f"{e['split']}:{e['path']} ({e['label']})"
                                      for e in g["entries"]))

    if rep["ciplab"]:
        c = rep["ciplab"]
        out += ["", "## CIPLab fakes", "", f"- difficulty: {c['difficulty']}",
                f"- per split: {c['difficulty_per_split']}",
                f"- edited regions: {c['edited_regions']}",
                f"- number of regions edited: {c['num_regions_edited']}",
                f"- names that did not parse: {c['unparsed_names']}"]
    if rep.get("videos"):
        v = rep["videos"]
        out += ["", "## Videos", "",
                f"{v['num_videos']} videos, {v['num_frames']} frames, {v['num_groups']} groups "
                "(a video with the videos that share its source)", "",
                "| split | real videos | fake videos | real frames | fake frames | groups |",
                "|---|---|---|---|---|---|"]
        for split, c in v["per_split"].items():
            out.append(f"| {split} | {c['videos']['real']} | {c['videos']['fake']} | "
                       f"{c['frames']['real']} | {c['frames']['fake']} | {c['groups']} |")
        crossing = v["groups_across_splits"]
        out += ["", f"- groups in more than one split (leakage): {crossing['count']}"]
        out += [f"  - {g['group']}: {', '.join(g['splits'])}" for g in crossing["groups"][:MAX_MD]]
    if rep["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in rep["notes"]]
    return "\n".join(out) + "\n"


def plot_color_histograms(hists: dict[int, np.ndarray], counts: dict[int, int], path: str) -> None:
    """One panel per RGB channel, a normalised histogram per class."""
    # The object API renders with Agg and touches no global pyplot / backend state.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3, sharey=True)
    styles = {0: "-", 1: "--"}
    for c, (ax, cname) in enumerate(zip(axes, ("red", "green", "blue"), strict=True)):
        for label, h in sorted(hists.items()):
            total = h[c].sum()
            if total == 0:
                continue
            ax.plot(np.arange(256), h[c] / total, styles.get(label, ":"), color=cname,
                    alpha=0.9 if label else 0.6,
                    label=f"{CLASS_NAMES[label]} (n={counts.get(label, 0)})")
        ax.set_title(f"{cname} channel")
        ax.set_xlabel("pixel value")
        ax.set_xlim(0, 255)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of pixels")
    fig.suptitle("Colour histograms per class (random sample of images)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write_report(
    output_dir: str,
    manifest: dict[str, Any],
    kept: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    hists: dict[int, np.ndarray],
    hist_counts: dict[int, int],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Writes report.json, report.md and color_histograms.png; returns the report dict."""
    rep = build_report(manifest, kept, skipped, hist_counts, notes)
    try:
        plot_color_histograms(hists, hist_counts, os.path.join(output_dir, REPORT_FILES[2]))
    except Exception as e:  # noqa: BLE001 - the plot is optional; the numbers are not
        rep["color_histograms"]["error"] = f"{type(e).__name__}: {e}"
    json_io.write_json(rep, os.path.join(output_dir, REPORT_FILES[0]))
    with open(os.path.join(output_dir, REPORT_FILES[1]), "w") as f:
        f.write(render_markdown(rep))
    return rep
