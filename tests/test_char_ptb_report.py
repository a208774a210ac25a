"""results/char_ptb.md + .csv from run directories: no runs yet, seeds averaged, marks,
departures from the paper's protocol, bpc against evaluation length, determinism."""
import csv
import json
import math
import statistics

import pytest
import yaml

from bnrnn.report import char_ptb
from bnrnn.report.runs import RunError

LENGTHS = ("50", "100", "200", "500", "1000", "whole")


def write_run(root, norm, seed, *, stream=(1.40, 1.38), bpc=(1.45, 1.43), status="completed",
              epochs=50, by_length=None, overrides=(), batch_size=64, name="cooijmans_char_ptb"):
    """A run directory as bnrnn.engine writes it, with the whole-split keys of the evaluation:
    ``stream`` = (valid_bpc_stream, test_bpc_stream), ``bpc`` = (best valid_bpc, test bpc)."""
    path = root / f"{norm}_seed{seed}{''.join('_' + o for o in overrides)}"
    rows = [{"epoch": e, "train_bpc": 2.0 - 0.1 * e, "valid_bpc": bpc[0] + 0.1 * (3 - e)}
            for e in (1, 2, 3)]
    command = " ".join(["python -m bnrnn.train", f"experiment={name}", f"model.norm={norm}",
                        f"seed={seed}", *overrides])
    final = {"name": name, "norm": norm, "seed": seed, "status": status,
             "epochs_completed": epochs, "max_epochs": 50, "protocol_epochs": 50,
             "shortened": epochs < 50, "best_epoch": 3, "best": rows[-1] | {"valid_bpc": bpc[0]},
             "test": {"bpc": bpc[1], "ce": bpc[1] * math.log(2)} if status == "completed" else None,
             "hardware": "Test GPU (cuda)", "git_revision": "0123456789abcdef0123456789abcdef01234567",
             "finished": f"2026-12-0{seed}T00:00:00+0000", "command": command,
             "overrides": [f"experiment={name}", f"model.norm={norm}", f"seed={seed}", *overrides]}
    if status == "completed":
        final |= {"valid_bpc_stream": stream[0], "test_bpc_stream": stream[1]}
        if by_length is not None:
            final["test_bpc_by_length"] = dict(zip(LENGTHS, by_length))
    config = {"name": name, "seed": seed,
              "model": {"norm": norm, "hidden_size": 1000, "num_layers": 1, "embedding_size": None},
              "optim": {"_target_": "torch.optim.Adam", "lr": 2e-3},
              "data": {"seq_len": 100, "batch_size": batch_size},
              "trainer": {"clip_grad_norm": 1.0, "protocol_epochs": 50}}
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(final["overrides"]))
    (path / "final.json").write_text(json.dumps(final))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def cells(md: str, first: str) -> dict[str, str]:
    """The cells of the markdown row whose first cell is ``first``, by header, from the table
    that holds it."""
    lines = md.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith(f"| {first} |"))
    header = next(lines[j] for j in range(i, -1, -1) if lines[j + 1].startswith("|---"))
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return dict(zip(split(header), split(lines[i])))


def test_no_runs_yet_gives_not_yet_run_rows_beside_the_paper(tmp_path):
    (tmp_path / "runs").mkdir()
    written = char_ptb.build(tmp_path / "runs", tmp_path / "out", "python scripts/make_tables.py")
    assert [p.name for p in written] == ["char_ptb.md", "char_ptb.csv"]
    md = written[0].read_text()
    for variant, paper in (("LSTM (baseline)", "1.38"), ("BN-LSTM (Cooijmans)", "1.32")):
        row = cells(md, variant)
        assert row["status"] == "not yet run" and row["Cooijmans et al. test bpc"] == paper
        assert row["test bpc (whole split)"] == "—" and row["Δ test vs paper"] == "—"
    assert "No run has recorded `test_bpc_by_length` yet." in md and "No run yet." in md
    assert "char_ptb_curves" not in md
    assert "departs from the paper's protocol in: nothing." in md  # the config as composed
    assert "from 0 run directories" in md
    with open(written[1]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["norm"], r["status"], r["paper_test_bpc"], r["test_bpc_stream_mean"], r["hardware"])
            for r in rows] == [("none", "not yet run", "1.38", "", ""),
                               ("bn_recurrent", "not yet run", "1.32", "", "")]


def test_runs_are_averaged_marked_and_set_beside_the_paper(tmp_path):
    runs = tmp_path / "runs"
    base_length = (1.52, 1.41, 1.39, 1.385, 1.383, 1.380)
    write_run(runs, "none", 1, stream=(1.41, 1.39), bpc=(1.46, 1.44), by_length=base_length)
    write_run(runs, "none", 2, stream=(1.43, 1.41), bpc=(1.48, 1.46), by_length=base_length)
    write_run(runs, "bn_recurrent", 1, stream=(1.36, 1.34), bpc=(1.40, 1.38),
              by_length=(1.50, 1.37, 1.36, 1.40, 1.55, 1.70))
    write_run(runs, "bn_recurrent", 2, status="interrupted", epochs=7)
    write_run(runs, "none", 3, overrides=("data.batch_size=32",), batch_size=32)
    out = tmp_path / "out"
    written = char_ptb.build(runs, out, "cmd")
    assert [p.name for p in written] == ["char_ptb.md", "char_ptb.csv", "char_ptb_curves.png",
                                         "char_ptb_curves.pdf", "char_ptb_lengths.png",
                                         "char_ptb_lengths.pdf"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written[2::2])
    assert all(p.read_bytes()[:4] == b"%PDF" for p in written[3::2])
    md = written[0].read_text()
    assert "](char_ptb_curves.png)" in md and "](char_ptb_lengths.png)" in md

    base = cells(md, "LSTM (baseline)")
    assert base["status"] == "complete" and base["seeds"] == "1, 2" and base["epochs"] == "50/50"
    assert base["test bpc (whole split)"] == f"1.400 ± {statistics.stdev([1.39, 1.41]):.3f} (n=2)"
    assert base["valid bpc (sequences of 100)"].startswith("1.470 ± ")
    assert base["Δ test vs paper"] == f"{1.40 - 1.38:+.3f}" and base["deviations from the paper"] == "none"
    bn = cells(md, "BN-LSTM (Cooijmans)")
    assert bn["test bpc (whole split)"] == "1.340" and bn["Δ test vs paper"] == "+0.020"
    marked = cells(md, "BN-LSTM (Cooijmans) | encoding=bnrnn, examples=shifted, crop=none | interrupted at 7/50 epochs")
    assert marked["epochs"] == "7/50" and marked["Δ test vs paper"] == "—"
    small = cells(md, "LSTM (baseline) [data.batch_size=32]")
    assert small["deviations from the paper"] == "data.batch_size=32 (paper: 64)"
    assert small["Cooijmans et al. test bpc"] == "—"  # not the paper's protocol: no paper number

    assert "LSTM (baseline): test 1.400 bpc over the whole split against the paper's 1.38 (+0.020)" in md
    assert f"BN-LSTM minus LSTM: {1.34 - 1.40:+.3f} bpc here, {1.32 - 1.38:+.2f} in the paper." in md
    assert "1 run(s) did not complete" in md.split("## Findings")[1].split("##")[0]

    by_length = md.split("## Test bpc against the evaluation length")[1].split("## Runs")[0]
    row = cells(by_length, "BN-LSTM (Cooijmans)")
    assert (row["50"], row["1000"], row["whole split"]) == ("1.500", "1.550", "1.700")
    assert cells(by_length, "LSTM (baseline)")["200"] == "1.390 ± 0.000 (n=2)"
    assert "interrupted" not in by_length  # rows without the key are left out

    runs_section = md.split("## Runs")[1]
    assert "`python -m bnrnn.train experiment=cooijmans_char_ptb model.norm=bn_recurrent seed=2`" in runs_section
    assert "| LSTM (baseline) | 1 | completed | Test GPU (cuda) | 2026-12-01T00:00:00+0000 |" in runs_section
    assert "- Hardware: Test GPU (cuda) (5 runs)." in md and "0123456789 (5 runs)" in md

    with open(out / "char_ptb.csv") as f:
        rows = {(r["norm"], r["overrides"], r["status"]): r for r in csv.DictReader(f)}
    row = rows[("none", "", "complete")]
    assert float(row["test_bpc_stream_mean"]) == pytest.approx(1.40)
    assert float(row["test_bpc_stream_std"]) == pytest.approx(statistics.stdev([1.39, 1.41]))
    assert float(row["diff_test_bpc_stream_vs_paper"]) == pytest.approx(0.02)
    assert float(row["test_bpc_length_whole_mean"]) == pytest.approx(1.380)
    assert rows[("bn_recurrent", "", "interrupted at 7/50 epochs")]["test_bpc_stream_mean"] == ""
    assert len(rows) == 4


def test_regeneration_is_byte_identical_and_other_runs_are_refused(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "none", 1, by_length=(1.5,) * 6)
    first = [p.read_bytes() for p in char_ptb.build(runs, tmp_path / "a", "cmd")]
    assert [p.read_bytes() for p in char_ptb.build(runs, tmp_path / "b", "cmd")] == first
    write_run(runs, "none", 2, name="grid_char_rnn")
    with pytest.raises(RunError, match=r"not cooijmans_char_ptb runs .*none_seed2"):
        char_ptb.build(runs, tmp_path / "c", "cmd")
