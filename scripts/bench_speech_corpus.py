#!/usr/bin/env python
"""Benchmark the speech feature cache's storage formats on a synthetic corpus (``make bench``).

It speaks ``--hours`` of PTB sentences with libespeak-ng into torch shards (the real workers,
one fresh process per shard, ``--workers`` at a time), timing each process (real-time factor =
audio seconds / process seconds). The same utterances are then stored and opened three ways:

- ``torch shards, concatenated`` — format 1 as bnrnn shipped it: every shard sha256-checked and
  loaded, then all frames copied into one array per split;
- ``torch shards, mmap`` — the same files memory-mapped (``torch.load(mmap=True)``), the shards'
  arrays used in place (no concatenation);
- ``Arrow (datasets)`` — format 2: one ``save_to_disk`` Dataset per split, memory-mapped, frames
  as zero-copy views (``shards.load_splits``); and, for comparison, the same table read through
  ``datasets``' own ``with_format("torch")`` row access.

For each it measures the write time (from the finished shards), the sha256 time, and, in a
fresh subprocess each: the open time, the peak RSS (``VmHWM``, see :func:`memory`) and the anonymous RSS
(memory the process owns, not file pages that the kernel can drop) after opening, the
``SpeechData`` setup (feature statistics: one pass over every frame) and one epoch of training
batches. The page cache is warm (the files were just written). All of it runs for the
synthesized corpus and for it repeated ``--tile`` times (more data without more synthesis);
every figure is projected to a 50-hour corpus on the line through the two sizes (marked as
projected). Writes ``--out`` and a JSON beside it.

    python scripts/bench_speech_corpus.py --hours 0.5 --out results/bench_speech_corpus.md
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bnrnn.data.download import sha256sum  # noqa: E402
from bnrnn.data.speech import espeak, shards  # noqa: E402
from bnrnn.data.speech.batching import SpeechData, collate  # noqa: E402
from bnrnn.data.speech.synthetic import SyntheticSpeechData, make_plan, synthesize_shard  # noqa: E402
from bnrnn.io import git_revision, hardware, write_json, write_text  # noqa: E402

TARGET_HOURS = 50.0
EPOCHS = 3  # epochs timed per run (the fastest is reported): the machine may be shared
SECONDS_PER_UTTERANCE = 6.9  # measured mean of PTB train sentences at the default voices/rates
FORMATS = {  # key -> what the report calls it
    "pt_concat": "torch shards, concatenated (format 1, before)",
    "pt_mmap": "torch shards, mmap, no concat",
    "arrow": "Arrow (datasets), zero-copy views (format 2)",
    "arrow_formatter": "Arrow (datasets), with_format('torch') rows",
}


def timed_synthesis(job, out_path: str) -> dict:
    """``synthesize_shard`` in its fresh process, with that process's wall time."""
    start = time.perf_counter()
    entry = synthesize_shard(job, out_path)
    return entry | {"process_s": time.perf_counter() - start}


def generate(parts: Path, args) -> tuple[list[dict], float]:
    """Torch shards of ``args.utterances`` synthetic training utterances in ``parts``."""
    defaults = inspect.signature(SyntheticSpeechData.__init__).parameters
    lines = (Path(args.ptb) / "ptb.train.txt").read_text().splitlines()
    plan = make_plan(lines, args.utterances, np.random.default_rng([args.seed, 0]),
                     min_words=defaults["min_words"].default, voices=list(espeak.VOICES),
                     variants=list(espeak.VARIANTS), rate=defaults["rate"].default,
                     pitch=defaults["pitch"].default, pitch_range=defaults["pitch_range"].default,
                     prefix="train")
    jobs = [shards.ShardJob("train", i // args.shard_size, (args.library, plan[i:i + args.shard_size]))
            for i in range(0, len(plan), args.shard_size)]
    start = time.perf_counter()
    entries = shards._build_parts(parts, jobs, timed_synthesis, args.workers, "synthesizing", False)
    return entries, time.perf_counter() - start


def tile(parts: Path, entries: list[dict], copies: int, dest: Path) -> list[dict]:
    """The corpus ``copies`` times over (ids suffixed ``-c<j>``), as torch shards in ``dest``:
    a larger corpus for the storage figures without synthesizing more."""
    dest.mkdir(parents=True)
    tiled = []
    for j in range(copies):
        for e in entries:
            u = shards.read_shard(parts / e["file"])
            file = f"train-{len(tiled):05d}.pt"
            entry = shards.write_shard(dest / file, [f"{i}-c{j}" for i in u.ids],
                                       [u[i][0].numpy() for i in range(len(u))],
                                       [u[i][1].numpy() for i in range(len(u))])
            tiled.append({"split": "train", "seconds": e["seconds"]} | entry)
    return tiled


def write_torch_shards(src: Path, dest: Path, entries: list[dict]) -> float:
    """Seconds to write every shard again with ``write_shard`` (what format 1 stored)."""
    dest.mkdir(parents=True)
    items = [shards.read_shard(src / e["file"]) for e in entries]
    arrays = [([u[i][0].numpy().copy() for i in range(len(u))], [u[i][1].numpy().copy() for i in range(len(u))])
              for u in items]
    start = time.perf_counter()
    for e, u, (feats, labels) in zip(entries, items, arrays):
        shards.write_shard(dest / e["file"], u.ids, feats, labels)
    return time.perf_counter() - start


def write_arrow(src: Path, dest: Path, entries: list[dict]) -> float:
    """Seconds for format 2's split writing (``from_generator`` + ``save_to_disk``) and its
    dataset_dict and file list (as ``shards.build`` does after the parts)."""
    dest.mkdir(parents=True)
    start = time.perf_counter()
    shards.write_arrow_split(dest, "train", [src / e["file"] for e in entries], fingerprint="bench")
    write_json(dest / shards.DATASET_DICT, {"splits": ["train"]})
    files = shards._file_entries(dest, ["train"])
    seconds = time.perf_counter() - start
    write_json(dest / "manifest.json", {"format": shards.FORMAT_VERSION, "config": {}, "splits": ["train"],
                                        "shards": entries, "files": files})
    return seconds


# ---------------------------------------------------------------- the child: open and iterate

def open_pt_concat(directory: Path, verify: bool):
    """Format 1's load_splits as it was: sha256 of every shard, then one copy of all frames."""
    manifest = json.loads((directory / "manifest.json").read_text())
    parts = []
    for e in manifest["shards"]:
        if verify and sha256sum(directory / e["file"]) != e["sha256"]:
            raise SystemExit(f"checksum mismatch {e['file']}")
        parts.append(shards.read_shard(directory / e["file"]))
    feats = torch.cat([p.blocks[0][0] for p in parts])
    labels = torch.cat([p.blocks[0][1] for p in parts])
    lengths = torch.cat([p.lengths for p in parts])
    return {"train": shards.Utterances.packed([i for p in parts for i in p.ids], lengths, feats, labels)}


def open_pt_mmap(directory: Path, verify: bool):
    manifest = json.loads((directory / "manifest.json").read_text())
    for e in manifest["shards"]:
        if verify:
            shards._check_file(directory / e["file"], e["sha256"], None, directory)
    return {"train": shards.Utterances.concat([shards.read_shard(directory / e["file"])
                                               for e in manifest["shards"]])}


def open_arrow(directory: Path, verify: bool):
    return shards.load_splits(directory, json.loads((directory / "manifest.json").read_text()),
                              verify=verify)


class FormatterRows:
    """Utterance i through ``datasets``' own torch formatter (the obvious user path)."""

    def __init__(self, directory: Path):
        import datasets

        self.rows = datasets.load_from_disk(str(directory / "train")).with_format("torch", columns=["feats", "labels"])

    def __getitem__(self, i: int):
        row = self.rows[i]
        return row["feats"], row["labels"]


def memory() -> dict:
    """Peak RSS since :func:`reset_peak` and the current anonymous and file-backed RSS (MiB).

    The peak is ``VmHWM``, the kernel's high-water mark of this process's own memory map:
    ``resource.getrusage(...).ru_maxrss`` cannot serve, as Linux carries it across fork + exec,
    so a child started by a large parent reports the parent's peak (it did: every format read
    the same 1,137 MiB, the benchmark's own size)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mib = lambda key: int(status[key].split()[0]) / 1024  # noqa: E731
    return {"peak_mib": mib("VmHWM"), "anon_mib": mib("RssAnon"), "file_mib": mib("RssFile"),
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def reset_peak() -> None:
    """Start the peak afresh at the current RSS (Linux ``clear_refs`` 5), so the peak of
    opening is not the peak of importing torch and datasets."""
    Path("/proc/self/clear_refs").write_text("5")


def child(fmt: str, directory: Path, verify: bool, epoch: bool) -> dict:
    """Measured in a fresh process: open, memory, SpeechData setup, one epoch of batches."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    import datasets  # noqa: F401  (imported by every format, so open times exclude it)

    import_s = time.perf_counter() - start
    reset_peak()
    if fmt == "baseline":
        return memory() | {"import_datasets_s": import_s}
    opener = {"pt_concat": open_pt_concat, "pt_mmap": open_pt_mmap}.get(fmt, open_arrow)
    start = time.perf_counter()
    splits = opener(directory, verify)
    out = {"open_s": time.perf_counter() - start, "open": memory()}
    if not epoch:
        return out
    start = time.perf_counter()
    data = SpeechData(splits, num_classes=len(espeak.PHONEME_CLASSES), max_frames=None)
    out["setup_s"] = time.perf_counter() - start
    utts = FormatterRows(directory) if fmt == "arrow_formatter" else data.splits["train"]
    times = []
    for epoch in range(1 if fmt == "arrow_formatter" else EPOCHS):  # all from a warm page cache
        start, frames, batches = time.perf_counter(), 0, 0
        for idx in data.plan("train", epoch):
            features, lengths, labels = collate([utts[int(i)] for i in idx])
            frames += int(lengths.sum())
            batches += 1
        times.append(time.perf_counter() - start)
    out.update(epoch_s=min(times), epoch_times_s=times, batches=batches, frames=frames,
               epoch=memory())
    return out


def alternating_epochs(pt: Path, arrow: Path, rounds: int = 5) -> dict:
    """Epoch times of the three fast paths in one process, alternating epoch by epoch (the
    same plan for all): a paired comparison that load on a shared machine cannot tilt."""
    torch.set_num_threads(1)
    utts = {"pt_concat": open_pt_concat(pt, False)["train"], "pt_mmap": open_pt_mmap(pt, False)["train"],
            "arrow": open_arrow(arrow, False)["train"]}
    data = SpeechData({"train": utts["arrow"]}, num_classes=len(espeak.PHONEME_CLASSES), max_frames=None)
    times = {key: [] for key in utts}
    for epoch in range(rounds):
        plan = data.plan("train", epoch)
        for key, u in utts.items():
            start = time.perf_counter()
            for idx in plan:
                collate([u[int(i)] for i in idx])
            times[key].append(time.perf_counter() - start)
    return {"epoch_s": {k: min(v) for k, v in times.items()}, "epoch_times_s": times}


def measure(fmt: str, directory: Path, *, verify: bool = True, epoch: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--child", fmt, str(directory)] + ([] if verify else ["--no-verify"]) \
        + ([] if epoch else ["--no-epoch"])
    env = os.environ | {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{fmt} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report

METRICS = [  # (column, unit, how to read it from a format's figures; None: not measured for it)
    ("write", "s", lambda f: f.get("write_s")),
    ("sha256 of all files", "s", lambda f: f.get("sha256_s")),
    ("open (sha256 included)", "s", lambda f: f["verified"]["open_s"]),
    ("open (sha256 done before)", "s", lambda f: f["unverified"]["open_s"] if "unverified" in f else None),
    ("anon RSS after open", "MiB", lambda f: f["verified"]["open"]["anon_mib"]),
    ("peak RSS after open", "MiB", lambda f: f["verified"]["open"]["peak_mib"]),
    ("SpeechData setup", "s", lambda f: f["verified"]["setup_s"]),
    ("one epoch of batches", "s", lambda f: f["verified"]["epoch_s"]),
    ("peak RSS after epoch", "MiB", lambda f: f["verified"]["epoch"]["peak_mib"]),
    ("anon RSS after epoch", "MiB", lambda f: f["verified"]["epoch"]["anon_mib"]),
]


def project(points: list[tuple[float, float]], hours: float = TARGET_HOURS) -> float:
    """The value at ``hours`` on the line through the measured (hours, value) points (two
    sizes: their line, never below the larger measurement; one size: proportional)."""
    if len(points) == 1:
        h, y = points[0]
        return y * hours / h
    (h1, y1), (h2, y2) = points[0], points[-1]
    return max(y2, y2 + (y2 - y1) / (h2 - h1) * (hours - h2))


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:.3g} s" if value < 100 else f"{value:,.0f} s"


def table(rows: dict[str, list[float | None]]) -> list[str]:
    head = "| format | " + " | ".join(f"{name}" for name, _, _ in METRICS) + " |"
    lines = [head, "|---|" + "---|" * len(METRICS)]
    for key, label in FORMATS.items():
        lines.append(f"| {label} | " + " | ".join(cell(v, unit) for v, (_, unit, _) in zip(rows[key], METRICS)) + " |")
    return lines


def figures(size: dict) -> dict[str, list[float | None]]:
    return {key: [get(size["formats"][key]) for _, _, get in METRICS] for key in FORMATS}


def markdown(r: dict) -> str:
    m, g, sizes = r["meta"], r["generation"], r["sizes"]
    measured = [figures(s) for s in sizes]
    projected = {key: [None if measured[-1][key][j] is None
                       else project([(s["hours"], f[key][j]) for s, f in zip(sizes, measured)])
                       for j in range(len(METRICS))] for key in FORMATS}
    gen_50 = g["wall_s"] * TARGET_HOURS / g["hours"]
    lines = [
        "# Speech feature cache: torch shards vs Arrow (datasets)",
        "",
        f"Generated by `scripts/bench_speech_corpus.py` on {m['date']}.",
        f"Hardware: {m['hardware']}. Git revision: {m['git_revision']}. datasets {m['datasets']}, "
        f"pyarrow {m['pyarrow']}.",
        f"Command: `{m['command']}`",
        f"Load average when it finished (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in m['load_average'])} "
        f"on {os.cpu_count()} cores (a shared machine makes small timings noisy).",
        "",
        "Formats: " + "; ".join(f"**{label}**" for label in FORMATS.values()) + " (the last reads the "
        "same files as the one before it, through `datasets`' per-row formatter). Every open, setup "
        "and epoch is measured in a fresh process (`import datasets` done before the clock starts: "
        f"{r['baseline']['import_datasets_s']:.2f} s, paid once per process by the Arrow format); "
        "page cache warm (the files were just written). *anon RSS*: memory the process owns "
        "(`RssAnon`); *peak RSS*: `VmHWM` since the imports (reset "
        "through `/proc/self/clear_refs`; `ru_maxrss` would report the parent's peak, which Linux "
        "carries across fork + exec), which also counts the touched file pages of a memory map "
        "(page cache the kernel can drop). Interpreter baseline (python, torch, datasets imported, "
        f"nothing opened): {r['baseline']['anon_mib']:.0f} MiB anon, {r['baseline']['peak_mib']:.0f} MiB peak. "
        f"One epoch: every training batch of `SpeechData` (24 utterances, deltas, padding) collated "
        f"once, one thread. Times: the fastest of {m['rounds']} interleaved rounds x {EPOCHS} epochs "
        f"(the formatter: one round); memory: the median. SpeechData setup: its feature statistics, one pass over every frame.",
        "",
        "## Generation (common to both formats)",
        "",
        f"{g['utterances']} utterances, {g['hours']:.3f} h of audio, {g['shards']} shards, "
        f"{m['workers']} worker processes: {cell(g['wall_s'], 's')} wall, "
        f"{g['rtf_per_process']:.1f}x real time per process (synthesis, features, shard write). "
        f"**Projected for {TARGET_HOURS:g} h: {cell(gen_50, 's')} ({gen_50 / 3600:.1f} h) with "
        f"{m['workers']} workers.**",
        "",
    ]
    for s, f in zip(sizes, measured):
        lines += [f"## Measured: {s['utterances']} utterances, {s['hours']:.2f} h, {s['frames']:,} frames "
                  f"({s['frames'] * 41 * 4 / 2**20:,.0f} MiB of features; files: torch "
                  f"{s['bytes']['pt'] / 2**20:,.0f} MiB, Arrow {s['bytes']['arrow'] / 2**20:,.0f} MiB)", ""]
        lines += table(f) + [""]
    basis = (f"the line through the {len(sizes)} measured sizes" if len(sizes) > 1
             else "proportional to hours")
    lines += [f"## Projected to {TARGET_HOURS:g} h (not measured: {basis}, linear in hours)", ""]
    lines += table(projected) + [""]
    lines += summary(measured[-1], projected, sizes[-1]["hours"], gen_50, sizes[-1]["alternating"])
    return "\n".join(lines) + "\n"


def summary(measured: dict, projected: dict, hours: float, gen_50: float, alternating: dict) -> list[str]:
    """The comparisons the decision rests on, in numbers (largest measured size; projected)."""
    col = {name: j for j, (name, _, _) in enumerate(METRICS)}

    def both(key: str, name: str) -> str:
        unit = METRICS[col[name]][1]
        return f"{cell(measured[key][col[name]], unit)} ({cell(projected[key][col[name]], unit)} projected)"

    arrow_write = projected["arrow"][col["write"]]
    return [
        f"## Comparison ({hours:.2f} h measured; 50 h projected)", "",
        *(f"- {name}: " + "; ".join(f"{short} {both(key, name)}" for key, short in
                                    (("pt_concat", "concatenated shards"), ("pt_mmap", "mmap shards"),
                                     ("arrow", "Arrow"), ("arrow_formatter", "Arrow via with_format"))
                                    if measured[key][col[name]] is not None)
          for name in ("open (sha256 included)", "open (sha256 done before)", "anon RSS after open",
                       "one epoch of batches", "write")),
        f"- one epoch, the three in one process, alternating epoch by epoch (fastest of "
        f"{len(alternating['epoch_times_s']['arrow'])}): "
        + "; ".join(f"{short} {cell(alternating['epoch_s'][key], 's')}" for key, short in
                    (("pt_concat", "concatenated shards"), ("pt_mmap", "mmap shards"), ("arrow", "Arrow"))),
        f"- Arrow's write comes on top of the workers' shards (it reads them): "
        f"{cell(arrow_write, 's')} projected at 50 h, "
        f"{100 * arrow_write / gen_50:.1f} % of the projected generation ({cell(gen_50, 's')}).",
        "",
    ]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=0.5, help="audio to synthesize (sets --utterances)")
    p.add_argument("--utterances", type=int, help=f"training utterances (default: hours / {SECONDS_PER_UTTERANCE} s)")
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--tile", type=int, default=8, help="also measure the corpus repeated this many "
                   "times (a larger corpus without synthesizing more; the projection fits both sizes)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--library", default="auto", choices=espeak.LIBRARIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ptb", default=str(REPO / "tests/fixtures/ptb"), help="folder with ptb.train.txt")
    p.add_argument("--work-dir", help="where the corpora go (default: a temporary folder, removed)")
    p.add_argument("--out", default=str(REPO / "results/bench_speech_corpus.md"))
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurements per format "
                   "(the fastest time is reported; the formatter runs once)")
    p.add_argument("--from-json", help="re-render --out from a result JSON (measures nothing)")
    p.add_argument("--child", nargs=2, metavar=("FORMAT", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-epoch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        fmt, where = args.child
        if fmt == "alternating":
            print(json.dumps(alternating_epochs(Path(where) / "pt", Path(where) / "arrow")))
        else:
            print(json.dumps(child(fmt, Path(where), not args.no_verify, not args.no_epoch)))
        return {}
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        write_text(args.out, markdown(result))
        return result
    if args.utterances is None:
        args.utterances = max(1, math.ceil(args.hours * 3600 / SECONDS_PER_UTTERANCE))
    if args.utterances < 1 or args.shard_size < 1 or args.workers < 1:
        p.error("--utterances, --shard-size and --workers must be >= 1")
    espeak.load_library(args.library)  # fail early with the install hint

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_speech_"))
    try:
        return run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def combine(runs: list[dict]) -> dict:
    """One figure per field from repeated runs: the fastest time (``*_s``: what the code costs
    when the shared machine lets it run), the median of the rest; the runs are kept too."""
    out = {}
    for k, v in runs[0].items():
        values = [r[k] for r in runs]
        if isinstance(v, dict):
            out[k] = combine(values)
        elif isinstance(v, list):
            out[k] = values
        else:
            out[k] = min(values) if k.endswith("_s") else float(np.median(values))
    return out


def storage(parts: Path, entries: list[dict], work: Path, rounds: int) -> dict:
    """Every format's figures for the corpus of torch shards ``parts`` (see the docstring)."""
    pt, arrow = work / "pt", work / "arrow"
    formats = {k: {} for k in FORMATS}
    formats["pt_concat"]["write_s"] = formats["pt_mmap"]["write_s"] = write_torch_shards(parts, pt, entries)
    for e in entries:  # the rewritten shards have the same bytes (deterministic torch.save)
        assert sha256sum(pt / e["file"]) == e["sha256"], e["file"]
    write_json(pt / "manifest.json", {"format": 1, "config": {}, "shards": entries})
    formats["arrow"]["write_s"] = write_arrow(parts, arrow, entries)
    start = time.perf_counter()
    for e in entries:
        sha256sum(pt / e["file"])
    formats["pt_concat"]["sha256_s"] = formats["pt_mmap"]["sha256_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in json.loads((arrow / "manifest.json").read_text())["files"]:
        sha256sum(arrow / name)
    formats["arrow"]["sha256_s"] = time.perf_counter() - start
    runs = {key: {"verified": [], "unverified": []} for key in FORMATS}
    for _ in range(rounds):  # interleaved, so a burst of load on a shared machine hits every format
        for key in FORMATS:
            directory = pt if key.startswith("pt") else arrow
            if key == "arrow_formatter" and runs[key]["verified"]:
                continue  # tens of times slower: one run says enough
            runs[key]["verified"].append(measure(key, directory))
            if key != "arrow_formatter":
                runs[key]["unverified"].append(measure(key, directory, verify=False, epoch=False))
    for key, r in runs.items():
        formats[key].update({k: combine(v) for k, v in r.items() if v})
    alternating = measure("alternating", work)
    return {"hours": sum(e["seconds"] for e in entries) / 3600, "utterances": sum(e["utterances"] for e in entries),
            "frames": sum(e["frames"] for e in entries), "shards": len(entries), "formats": formats,
            "alternating": alternating,
            "bytes": {"pt": sum((pt / e["file"]).stat().st_size for e in entries),
                      "arrow": sum(v["bytes"] for v in json.loads((arrow / "manifest.json").read_text())["files"].values())}}


def run(args, work: Path) -> dict:
    import datasets
    import pyarrow

    parts = work / "parts"
    entries, gen_s = generate(parts, args)
    sizes = [storage(parts, entries, work / "x1", args.rounds)]
    if args.tile > 1:
        tiled = tile(parts, entries, args.tile, work / f"parts-x{args.tile}")
        sizes.append(storage(work / f"parts-x{args.tile}", tiled, work / f"x{args.tile}", args.rounds))
    result = {
        "meta": {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "hardware": hardware("cpu"), "git_revision": git_revision(REPO),
                 "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]),
                 "datasets": datasets.__version__, "pyarrow": pyarrow.__version__,
                 "shard_size": args.shard_size, "workers": args.workers, "tile": args.tile,
                 "rounds": args.rounds,
                 "load_average": os.getloadavg()},
        "generation": {"wall_s": gen_s, "hours": sizes[0]["hours"], "utterances": sizes[0]["utterances"],
                       "shards": len(entries),
                       "rtf_per_process": float(np.mean([e["seconds"] / e["process_s"] for e in entries]))},
        "baseline": measure("baseline", work / "x1" / "arrow"),
        "sizes": sizes,
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    write_text(out, markdown(result))
    print(out.read_text())
    return result


if __name__ == "__main__":
    main()
