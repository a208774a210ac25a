"""Results tables from run directories: numbers, marks, byte-identical regeneration, collection."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bnrnn.io import write_json, write_jsonl, write_text
from bnrnn.report import ptb
from bnrnn.report.format import fmt, fmt_mean_std, markdown_table, provenance, write_table
from bnrnn.report.runs import RunError, load_runs
from bnrnn.report.table import Table, column, joined, shown
from tests.helpers import REPO, train

sys.path.insert(0, str(REPO / "scripts"))
import collect_runs  # noqa: E402

TINY = ["model.hidden_size=16", "data.limit_batches=3", "data.bptt=5", "data.batch_size=4",
        "quiet=true", "device=cpu", "trainer.check_every=1"]


def write_run(root: Path, name="ptb_small", norm="none", seed=1, train_ppl=(300.0, 150.0, 100.0),
              valid_ppl=(250.0, 140.0, 130.0), test_ppl=125.0, status="completed", protocol=None,
              limit_batches=None, overrides=(), hardware="Test GPU (cuda)", day=1,
              subdir=None) -> Path:
    """A run directory laid out as bnrnn.engine + Hydra write it (final.json, metrics.jsonl,
    .hydra/config.yaml, .hydra/overrides.yaml)."""
    run_dir = root / (subdir or f"{name}/{norm}/seed{seed}")
    protocol = protocol or len(train_ppl)
    rows, wall = [], 0.0
    for epoch, (tr, va) in enumerate(zip(train_ppl, valid_ppl), 1):
        wall += 60.0
        rows.append({"epoch": epoch, "step": 100 * epoch, "lr": 1.0, "train_loss": math.log(tr),
                     "train_ppl": tr, "train_tokens_per_s": 1000.0 * epoch,
                     "valid_loss": math.log(va), "valid_ppl": va, "epoch_time": 60.0,
                     "wall_time": wall})
    best = min(rows, key=lambda r: r["valid_ppl"]) if rows else None
    final = {
        "status": status, "error": None, "epochs_completed": len(rows), "max_epochs": protocol,
        "protocol_epochs": protocol,
        "shortened": len(rows) < protocol or bool(limit_batches), "step": 100 * len(rows),
        "wall_time": wall, "best_epoch": best["epoch"] if best else None, "best": best,
        "test": {"loss": math.log(test_ppl), "ppl": test_ppl} if status == "completed" else None,
        "selection": "valid_ppl", "git_revision": "0123456789abcdef0123456789abcdef01234567",
        "hardware": hardware, "num_parameters": 1000,
        "finished": f"2025-01-{day:02d}T00:00:00+0000", "name": name, "seed": seed,
        "norm": norm, "limit_batches": limit_batches, "command": "python -m bnrnn.train",
        "overrides": [f"experiment={name}", f"model.norm={norm}", f"seed={seed}", *overrides],
        "started": f"2025-01-{day:02d}T00:00:00+0000",
    }
    write_json(run_dir / "final.json", final)
    if rows:
        write_jsonl(run_dir / "metrics.jsonl", rows)
    write_text(run_dir / ".hydra" / "config.yaml",
               f"name: {name}\nseed: {seed}\nmodel:\n  norm: {norm}\n  hidden_size: 200\n"
               "data:\n  cache_dir: ${oc.env:BNRNN_CACHE,\"~/.cache/bnrnn\"}/ptb\n"
               "  label: ${name}-${model.norm}\n")
    write_text(run_dir / ".hydra" / "overrides.yaml",
               "".join(f"- {o}\n" for o in final["overrides"]))
    return run_dir


def csv_by(out: Path) -> dict[tuple[str, str, str], dict]:
    import csv

    with open(out / "ptb.csv") as f:
        return {(r["size"], r["norm"], r["status"]): r for r in csv.DictReader(f)}


# ---------------------------------------------------------------------- runs and format
def test_load_runs_reads_engine_layout(tmp_path):
    write_run(tmp_path, norm="bn_input", seed=3, train_ppl=(200.0, 90.0, 95.0))
    (run,) = load_runs(tmp_path)
    assert (run.name, run.norm, run.seed, run.status) == ("ptb_small", "bn_input", 3, "completed")
    assert run.complete and not run.shortened and run.epochs_completed == 3
    assert run.best_of("train_ppl") == 90.0 and run.best["valid_ppl"] == 130.0
    assert run.curve("valid_ppl") == ([1, 2, 3], [250.0, 140.0, 130.0])
    # interpolations into the config resolve; environment look-ups stay as written
    assert run.config["data"]["label"] == "ptb_small-bn_input"
    assert run.config["data"]["cache_dir"].startswith("${oc.env:BNRNN_CACHE")
    assert run.overrides[1] == "model.norm=bn_input"


def test_load_runs_errors_name_the_broken_file(tmp_path):
    run_dir = write_run(tmp_path)
    good = (run_dir / "metrics.jsonl").read_text().splitlines()
    write_text(run_dir / "metrics.jsonl", good[0] + "\n" + good[1][:-5] + "\n")
    with pytest.raises(RunError, match=r"metrics\.jsonl, line 2: not valid JSON"):
        load_runs(tmp_path)
    write_text(run_dir / "metrics.jsonl", "[1, 2]\n")
    with pytest.raises(RunError, match="'epoch' key"):
        load_runs(tmp_path)
    write_jsonl(run_dir / "metrics.jsonl", [])
    write_text(run_dir / "final.json", "{")
    with pytest.raises(RunError, match=r"final\.json is not valid JSON"):
        load_runs(tmp_path)
    with pytest.raises(RunError, match="not a directory"):
        load_runs(tmp_path / "absent")


def test_format_helpers(tmp_path):
    assert fmt(None) == fmt(float("nan")) == "—" and fmt(1.234) == "1.23" and fmt(math.inf) == "inf"
    assert fmt_mean_std([]) == "—" and fmt_mean_std([5.0]) == "5.00"
    assert fmt_mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00 (n=3)"
    with pytest.raises(ValueError, match="diverged"):
        fmt_mean_std([1.0, math.inf])
    assert markdown_table(["a", "b"], [["1", "x|y"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |\n"
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["1"]])
    write_table(tmp_path / "t", "# T", [{"a": 1, "b": None}, {"a": 0.5, "c": "x,y"}])
    assert (tmp_path / "t.md").read_text() == "# T\n"
    assert (tmp_path / "t.csv").read_text() == 'a,b,c\n1,,\n0.5,,"x,y"\n'


def test_one_table_spec_gives_the_markdown_and_the_csv():
    rows = [{"name": "a", "x": 1.0, "y": None}, {"name": "b|c", "x": 2.5, "y": 4.0}]
    name = column("name", lambda r: r["name"], name=lambda r: r["name"])
    spec = Table((
        name,
        shown("x", "x_value", lambda r: r["x"], lambda v: f"{v:.1f}"),
        joined("x / y", shown(None, "x", lambda r: r["x"]), shown(None, "y", lambda r: r["y"]),
               when=lambda r: r["y"] is not None),
        column(None, None, twice=lambda r: 2 * r["x"]),  # CSV only
        column("note", lambda r: "md only"),
    ))
    assert spec.markdown(rows) == ("| name | x | x / y | note |\n|---|---|---|---|\n"
                                   "| a | 1.0 | — | md only |\n| b\\|c | 2.5 | 2.5 / 4.0 | md only |\n")
    assert spec.records(rows) == [{"name": "a", "x_value": 1.0, "x": 1.0, "y": None, "twice": 2.0},
                                  {"name": "b|c", "x_value": 2.5, "x": 2.5, "y": 4.0, "twice": 5.0}]
    picked = Table(spec.columns, where=lambda r: r["y"] is not None, empty="none yet\n")
    assert [r["name"] for r in picked.records(rows)] == ["b|c"]
    assert picked.markdown(rows[:1]) == "none yet\n"
    # a second table's shared columns keep their place; its own fields follow
    more = Table((name, column("z", lambda r: "", z=lambda r: -r["x"])))
    assert list((spec + more).records(rows)[0]) == ["name", "x_value", "x", "y", "twice", "z"]
    clash = Table((name, column(None, None, name=lambda r: "other")))
    with pytest.raises(ValueError, match="'name' is declared twice"):
        clash.records(rows)
    with pytest.raises(ValueError, match=r"\['x'\] have a header but no cell"):
        Table((column("x", None, x=lambda r: 1),))


def test_provenance_comes_from_the_runs(tmp_path):
    write_run(tmp_path, seed=1, day=2, hardware="GPU A (cuda)")
    write_run(tmp_path, seed=2, day=5, hardware="GPU A (cuda)")
    text = provenance(load_runs(tmp_path), "python scripts/make_tables.py")
    assert "`python scripts/make_tables.py` from 2 run directories" in text
    assert "GPU A (cuda) (2 runs)" in text
    assert "2025-01-02T00:00:00+0000 to 2025-01-05T00:00:00+0000" in text
    assert "0123456789 (2 runs)" in text


def test_hardware_says_how_many_runs_shared_the_device(tmp_path):
    from bnrnn.report.table import hardware

    write_run(tmp_path / "alone", seed=1)
    shared = write_run(tmp_path / "shared", seed=2)
    final = json.loads((shared / "final.json").read_text())
    write_json(shared / "final.json", final | {"concurrent_runs": 12})
    alone, together = (load_runs(tmp_path / d) for d in ("alone", "shared"))
    assert hardware(SimpleNamespace(runs=alone)) == "Test GPU (cuda)"
    assert hardware(SimpleNamespace(runs=together)) == "Test GPU (cuda), shared by 12 runs"


# ---------------------------------------------------------------------- the PTB table
def test_ptb_table_means_and_differences_to_the_papers(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, seed=1, train_ppl=(200.0, 70.0), valid_ppl=(150.0, 120.0), test_ppl=115.0)
    write_run(runs, seed=2, train_ppl=(200.0, 80.0), valid_ppl=(150.0, 124.0), test_ppl=117.0)
    write_run(runs, norm="bn_recurrent", train_ppl=(150.0, 60.0), valid_ppl=(140.0, 125.0))
    # Zaremba's protocol (batch 20): compared with Zaremba, not Laurent
    write_run(runs, seed=1, train_ppl=(200.0, 70.0), valid_ppl=(150.0, 122.0), test_ppl=116.0,
              overrides=("data.batch_size=20",), subdir="b20/none/seed1")
    ptb.build(runs, out, "python scripts/make_tables.py")
    with open(out / "ptb.csv") as f:
        by = {(r["norm"], r["overrides"]): r for r in csv.DictReader(f)}
    zaremba = by[("none", "data.batch_size=20")]
    assert float(zaremba["diff_valid_vs_zaremba"]) == pytest.approx(122.0 - 120.7)
    assert float(zaremba["diff_test_vs_zaremba"]) == pytest.approx(116.0 - 114.5)
    assert zaremba["laurent_valid_ppl"] == ""
    base = by[("none", "")]
    assert base["n_runs"] == "2" and base["seeds"] == "1 2"
    assert float(base["best_train_ppl_mean"]) == pytest.approx(75.0)
    assert float(base["best_train_ppl_std"]) == pytest.approx(math.sqrt(50.0))
    assert float(base["best_valid_ppl_mean"]) == pytest.approx(122.0)
    assert float(base["test_ppl_at_best_valid_mean"]) == pytest.approx(116.0)
    assert float(base["diff_valid_vs_laurent"]) == pytest.approx(122.0 - 119.2)
    assert float(base["diff_train_vs_laurent"]) == pytest.approx(75.0 - 78.5)
    assert base["zaremba_valid_ppl"] == ""  # batch 32 is Laurent's protocol, not Zaremba's
    rec = by[("bn_recurrent", "")]
    assert rec["laurent_valid_ppl"] == "" and rec["zaremba_test_ppl"] == ""  # nothing published
    md = (out / "ptb.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| small | laurent_text | baseline |"))
    assert "75.00 ± 7.07 (n=2)" in line and "122.00 ± 2.83 (n=2)" in line
    assert "78.5 / 119.2" in line and "+2.8 (+2.3 %)" in line  # valid vs Laurent
    b20 = next(l for l in md.splitlines() if l.startswith("| small | laurent_text | baseline [data.batch_size=20] |"))
    assert "120.7 / 114.5" in b20 and "+1.5 (+1.3 %)" in b20  # test vs Zaremba
    assert "At Zaremba et al.'s batch of 20 the same code reaches 122.0 against their 120.7" in md
    assert "| small | laurent_text | baseline | complete | 1, 2 | 2/2 | 2.0 min | 1.0 min | 2.0 min | 1500 | Test GPU (cuda) |" in md


def test_ptb_table_marks_runs_that_are_not_complete(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, seed=1, train_ppl=(200.0, 70.0), valid_ppl=(150.0, 120.0))
    write_run(runs, seed=2, train_ppl=(200.0, 30.0), valid_ppl=(150.0, 90.0), protocol=15)
    write_run(runs, seed=3, train_ppl=(210.0,), valid_ppl=(160.0,), status="interrupted",
              protocol=2)
    write_run(runs, seed=4, train_ppl=(210.0,), valid_ppl=(160.0,), status="running", protocol=2)
    write_run(runs, seed=5, train_ppl=(400.0,), valid_ppl=(390.0,), status="diverged", protocol=2)
    write_run(runs, seed=6, train_ppl=(20.0, 10.0), valid_ppl=(20.0, 10.0), limit_batches=4)
    ptb.build(runs, out, "cmd")
    rows = csv_by(out)
    complete = rows[("ptb_small", "none", "complete")]
    assert complete["seeds"] == "1" and float(complete["best_valid_ppl_mean"]) == 120.0
    statuses = {k[2]: v["seeds"] for k, v in rows.items() if k[2] != "complete"}
    assert statuses == {"shortened: 2/15 epochs": "2", "interrupted at 1/2 epochs": "3",
                        "running or killed at 1/2 epochs": "4", "diverged after 1/2 epochs": "5",
                        "shortened: 2/2 epochs, data limited to 4 batches": "6"}
    md = (out / "ptb.md").read_text()
    assert "5 runs are not a complete protocol run" in md
    lines = md.splitlines()
    header = [c.strip() for c in next(l for l in lines if l.startswith("| size |")
                                                and "best valid ppl" in l).strip("|").split("|")]
    diverged = next(l for l in lines if "| diverged after" in l and "390.00" in l)
    cells = dict(zip(header, (c.strip() for c in diverged.strip("|").split("|"))))
    assert cells["seeds"] == "5" and cells["best valid ppl"] == "390.00"
    assert cells["test ppl at best valid"] == "—"  # no test perplexity for a diverged run
    assert cells["Laurent train / valid"] == "78.5 / 119.2"  # the paper beside it...
    assert cells["Δ train / Δ valid vs Laurent"] == "—"  # ...but no difference to an unfinished run


def test_ptb_findings_are_computed_from_the_numbers(tmp_path):
    def findings(bn_train: float, base_valid: float) -> str:
        runs = tmp_path / f"runs_{bn_train}_{base_valid}"
        write_run(runs, train_ppl=(200.0, 80.0), valid_ppl=(150.0, base_valid))
        write_run(runs, norm="bn_input", train_ppl=(200.0, bn_train), valid_ppl=(150.0, 125.0))
        ptb.build(runs, runs.parent / f"out_{bn_train}_{base_valid}", "cmd")
        md = (runs.parent / f"out_{bn_train}_{base_valid}" / "ptb.md").read_text()
        return md.split("## What our numbers show")[1].split("## Runs")[0]

    text = findings(bn_train=60.0, base_valid=121.0)
    assert "best valid perplexity of 121.0, +1.5 % from the paper's 119.2 (within the ±3 % target)" in text
    assert "lowers best train perplexity from 80.0 to 60.0 (-25.0 %)" in text
    assert "raises best valid perplexity from 121.0 to 125.0" in text
    assert "as the paper reports" in text and "single seed" in text
    text = findings(bn_train=90.0, base_valid=130.0)
    assert "(outside the ±3 % target)" in text
    assert "raises best train perplexity from 80.0 to 90.0" in text
    assert "lowers best valid perplexity from 130.0 to 125.0" in text
    assert "not the paper's pattern" in text


def test_ptb_findings_compare_every_variant_in_the_table(tmp_path):
    # bn_sum is a NormLSTM variant the config accepts for a PTB run but not one of Table 2's
    # four: its complete row is in the table, so its comparison belongs in the findings too
    write_run(tmp_path / "runs", train_ppl=(200.0, 80.0), valid_ppl=(150.0, 121.0))
    write_run(tmp_path / "runs", norm="bn_sum", train_ppl=(200.0, 70.0), valid_ppl=(150.0, 124.0))
    ptb.build(tmp_path / "runs", tmp_path / "out", "cmd")
    md = (tmp_path / "out" / "ptb.md").read_text()
    assert "| small | laurent_text | bn_sum | complete |" in md
    text = md.split("## What our numbers show")[1].split("## Runs")[0]
    assert "Small: bn_sum lowers best train perplexity from 80.0 to 70.0" in text
    assert "raises best valid perplexity from 121.0 to 124.0" in text
    assert "No size has complete runs" not in text


def test_make_tables_regenerates_byte_identical_files(tmp_path):
    runs = tmp_path / "runs" / "ptb"
    for size in ("ptb_small", "ptb_medium"):
        for norm in ("none", "bn_input", "ln"):
            write_run(runs, name=size, norm=norm, seed=1)
    write_run(runs, name="ptb_medium", norm="bn_recurrent", status="interrupted", protocol=40)
    (tmp_path / "runs" / "nofamily").mkdir()
    (tmp_path / "runs" / "table").mkdir()  # a helper module of bnrnn/report, not a family
    cmd = [sys.executable, str(REPO / "scripts" / "make_tables.py"),
           "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path)
    names = ["ptb.md", "ptb.csv", "ptb_curves.png", "ptb_curves.pdf"]
    assert first.stdout.split() == [str(tmp_path / "out" / n) for n in names]
    assert "skipping" in first.stderr and "nofamily" in first.stderr
    assert f"skipping {tmp_path / 'runs' / 'table'}" in first.stderr
    before = {n: (tmp_path / "out" / n).read_bytes() for n in names}
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert {n: (tmp_path / "out" / n).read_bytes() for n in names} == before
    assert before["ptb_curves.png"][:4] == b"\x89PNG" and before["ptb_curves.pdf"][:4] == b"%PDF"
    assert f"`python scripts/make_tables.py --runs {tmp_path / 'runs'}" in before["ptb.md"].decode()


# ---------------------------------------------------------------------- collect_runs
def hydra_run(root: Path, sub: str, **kw) -> Path:
    """A run directory as a Hydra multirun job leaves it: big files beside the small ones."""
    run_dir = write_run(root, subdir=sub, **kw)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"\0" * 1000)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"\0" * 1000)
    (run_dir / "train.log").write_text("log\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    return run_dir


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_collect_runs_copies_only_small_files(tmp_path, capsys):
    sweep, dest = tmp_path / "multirun" / "sweep1", tmp_path / "results" / "runs" / "ptb"
    hydra_run(sweep, "ptb_small/none/seed1_0")
    hydra_run(sweep, "ptb_small/ln/seed1_1", norm="ln")
    assert collect_runs.main([str(sweep), "--dest", str(dest)]) == 0
    small = [".hydra/config.yaml", ".hydra/overrides.yaml", "final.json", "metrics.jsonl"]
    assert files_under(dest) == [f"ptb_small/{n}/seed1/{f}" for n in ("ln", "none") for f in small]
    assert (dest / "ptb_small/ln/seed1/final.json").read_bytes() == \
        (sweep / "ptb_small/ln/seed1_1/final.json").read_bytes()
    capsys.readouterr()
    assert collect_runs.main([str(sweep), "--dest", str(dest)]) == 0  # same runs again
    assert capsys.readouterr().out.count("unchanged") == 2


def test_collect_runs_never_overwrites_a_different_run_silently(tmp_path, capsys):
    dest = tmp_path / "dest"
    hydra_run(tmp_path / "sweep1", "a", valid_ppl=(250.0, 140.0, 130.0))
    hydra_run(tmp_path / "sweep2", "b", valid_ppl=(250.0, 140.0, 129.0))  # same name/norm/seed
    assert collect_runs.main([str(tmp_path / "sweep1"), "--dest", str(dest)]) == 0
    before = (dest / "ptb_small/none/seed1/final.json").read_bytes()
    assert collect_runs.main([str(tmp_path / "sweep2"), "--dest", str(dest)]) == 1
    assert "already holds a different run" in capsys.readouterr().err
    assert (dest / "ptb_small/none/seed1/final.json").read_bytes() == before
    # both at once: they would land in the same directory, so nothing is copied
    assert collect_runs.main([str(tmp_path / "sweep1"), str(tmp_path / "sweep2"),
                              "--dest", str(tmp_path / "both")]) == 1
    assert "would both be copied" in capsys.readouterr().err and not (tmp_path / "both").exists()
    assert collect_runs.main([str(tmp_path / "sweep2"), "--dest", str(dest), "--replace"]) == 0
    assert "replace" in capsys.readouterr().out
    assert json.loads((dest / "ptb_small/none/seed1/final.json").read_text())["best"]["valid_ppl"] == 129.0
    assert collect_runs.main([str(tmp_path / "sweep1"), str(tmp_path / "sweep2"), "--dest",
                              str(tmp_path / "rel"), "--layout", "relative"]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "rel").rglob("final.json")) == ["a", "b"]



def test_collect_runs_refuses_a_dest_that_is_a_file_before_copying(tmp_path, capsys):
    hydra_run(tmp_path / "sweep", "a")
    file = tmp_path / "ptb.md"
    file.write_text("table")
    for dest, what in ((file, "is a file"), (file / "runs", f"lies under the file {file}")):
        with pytest.raises(SystemExit) as e:
            collect_runs.main([str(tmp_path / "sweep"), "--dest", str(dest)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"--dest {dest} {what}; give a folder" in err and "Traceback" not in err
    assert file.read_text() == "table"

def test_collect_runs_replace_that_fails_midway_keeps_the_old_record_whole(tmp_path, monkeypatch):
    """--replace over a collected run, and the disk fills after the first file: the
    destination still holds the old run, every file of it, never the new final.json beside
    the old metrics."""
    import errno
    import os

    dest = tmp_path / "dest"
    hydra_run(tmp_path / "sweep1", "a", valid_ppl=(250.0, 140.0, 130.0))
    hydra_run(tmp_path / "sweep2", "b", valid_ppl=(250.0, 140.0, 129.0, 128.0))
    assert collect_runs.main([str(tmp_path / "sweep1"), "--dest", str(dest)]) == 0
    target = dest / "ptb_small/none/seed1"
    before = {f: (target / f).read_bytes() for f in files_under(target)}
    fsync, calls = os.fsync, []

    def disk_full_after_one_file(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_after_one_file)
    with pytest.raises(OSError, match="No space left"):
        collect_runs.main([str(tmp_path / "sweep2"), "--dest", str(dest), "--replace"])
    monkeypatch.undo()
    assert {f: (target / f).read_bytes() for f in files_under(target)} == before  # no .tmp left

# ---------------------------------------------------------------------- a real run, tabled
def test_a_real_tiny_training_run_is_tabled(ptb_root, tmp_path):
    runs = tmp_path / "runs"
    finals = {}
    for norm in ("none", "bn_input"):
        _, finals[norm], _ = train(["experiment=ptb_small", f"data.root={ptb_root}", *TINY,
                                    f"model.norm={norm}", "trainer.max_epochs=2", "seed=1"],
                                   runs / norm)
    written = ptb.build(runs, tmp_path / "out", "python scripts/make_tables.py")
    assert [p.name for p in written] == ["ptb.md", "ptb.csv", "ptb_curves.png", "ptb_curves.pdf"]
    rows = csv_by(tmp_path / "out")
    for norm, final in finals.items():
        row = rows[("ptb_small", norm, "shortened: 2/15 epochs, data limited to 3 batches")]
        assert float(row["best_valid_ppl_mean"]) == pytest.approx(final["best"]["valid_ppl"])
        assert float(row["test_ppl_at_best_valid_mean"]) == pytest.approx(final["test"]["ppl"])
        assert row["hardware"] == final["hardware"]
    md = (tmp_path / "out" / "ptb.md").read_text()
    assert "No size has complete runs" in md and "2 runs are not a complete protocol run" in md


def test_collect_runs_keeps_runs_with_other_overrides_apart(tmp_path):
    sweep, dest = tmp_path / "sweep", tmp_path / "dest"
    protocol = write_run(sweep, subdir="a", overrides=("device=cuda", "quiet=true", "data.root=/d/ptb"))
    zaremba = write_run(sweep, subdir="b", overrides=("data.batch_size=20", "quiet=true"))
    assert collect_runs.main([str(sweep), "--dest", str(dest)]) == 0
    assert (dest / "ptb_small/none/seed1/final.json").read_bytes() == (protocol / "final.json").read_bytes()
    assert (dest / "ptb_small/none/seed1_data.batch_size=20/final.json").read_bytes() == \
        (zaremba / "final.json").read_bytes()
