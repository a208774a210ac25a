"""scripts/bench_rnn.py end to end on a tiny shape (CPU): every variant timed, ratios to nn.LSTM."""
import json
import sys
from pathlib import Path

import pytest
import torch

from bnrnn.nn import VARIANTS
from tests.helpers import make_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_rnn  # noqa: E402


def test_bench_writes_a_table_with_every_variant_and_ratios(tmp_path):
    out = tmp_path / "bench.md"
    bench_rnn.main(["--device", "cpu", "--shapes", "tiny", "--ptb-sizes", "", "--reps", "2",
                    "--warmup", "1", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {r["variant"]: r for r in data["rnn"]}
    # every candidate but the CUDA-graph capture, which exists only on CUDA
    assert set(rows) == {label for label, _, backend in bench_rnn.CANDIDATES if backend != "graph"}
    assert rows["nn.LSTM"]["ratio"] == 1.0
    for r in rows.values():
        assert r["ms"] > 0 and r["ratio"] == pytest.approx(r["ms"] / rows["nn.LSTM"]["ms"])
    assert rows["bn_recurrent"]["backend"] == "reference"  # CPU: the fused kernels need a GPU
    md = out.read_text()
    assert "Hardware:" in md and "Git revision:" in md and "Command: `python" in md
    assert "| bn_recurrent | reference |" in md
    # re-rendering the JSON measures nothing and says so
    again = tmp_path / "again.md"
    bench_rnn.main(["--from-json", str(out.with_suffix(".json")), "--out", str(again)])
    rendered = again.read_text().splitlines()
    assert sum("nothing re-measured" in line for line in rendered) == 1
    assert [line for line in rendered if "nothing re-measured" not in line] == md.splitlines()


def test_protocol_estimate_needs_every_table2_run():
    meta = dict(hardware="x", device="cuda", git_revision="r", date="d", warmup=1, reps=1, command="c")
    row = dict(size="ptb_small", norm="none", backend="native", train_step_ms=1.0, eval_step_ms=1.0,
               peak_mib=1.0, tokens_per_s=1.0, epoch_s=1.0, protocol_epochs=15, protocol_hours=0.1)
    md = bench_rnn.markdown([], [row], meta)
    assert "not established by this benchmark" in md and "ptb_large ln" in md
    full = [dict(row, size=s, norm=n) for s in bench_rnn.PTB_SIZES for n in bench_rnn.TABLE2_NORMS]
    assert "(met)" in bench_rnn.markdown([], full, meta)


def test_full_ptb_step_and_protocol_estimate_on_cpu():
    import torch

    rows = bench_rnn.bench_ptb(["ptb_small"], torch.device("cpu"), warmup=0, reps=1)
    assert [r["norm"] for r in rows] == list(bench_rnn.TABLE2_NORMS)
    c = make_cfg(["experiment=ptb_small"])  # the protocol the benchmark estimates is the config's
    for r in rows:
        steps = -(-(929_589 // c.data.batch_size - 1) // c.data.bptt)  # training windows of an epoch
        assert r["epoch_s"] > steps * r["train_step_ms"] / 1e3
        assert r["protocol_hours"] == pytest.approx(c.trainer.max_epochs * r["epoch_s"] / 3600)


def test_shapes_and_variants_come_from_the_configs():
    for size in ("ptb_small", "ptb_medium", "ptb_large"):
        c, s = make_cfg([f"experiment={size}"]), bench_rnn.shape_of(size)
        assert (s.T, s.B, s.H, s.L) == (c.data.bptt, c.data.batch_size, c.model.hidden_size,
                                        c.model.num_layers)
    c, s = make_cfg(["experiment=speech_librispeech"]), bench_rnn.shape_of("speech")
    assert (s.B, s.H, s.L, s.stats, s.bidirectional) == (c.data.batch_size, c.model.hidden_size,
                                                        c.model.num_layers, c.model.stats, True)
    assert [n for _, n, _ in bench_rnn.CANDIDATES if n is not None] == list(VARIANTS)
    c, s = make_cfg(["experiment=cooijmans_char_ptb"]), bench_rnn.shape_of("char_ptb")
    assert (s.T, s.B, s.H, s.L) == (c.data.seq_len, c.data.batch_size, c.model.hidden_size,
                                    c.model.num_layers)
    assert set(bench_rnn.PTB_SIZES) == {"ptb_small", "ptb_medium", "ptb_large"}
    assert set(bench_rnn.TABLE2_NORMS) <= set(VARIANTS)


def test_graphed_cudnn_ratio_and_a_failed_capture_are_rendered():
    """The GPU-only columns: a graphed nn.LSTM row gives every row its ratio to it; a capture that
    fails is shown as such, never as a time."""
    meta = dict(hardware="x", device="cuda", git_revision="r", date="d", warmup=1, reps=1, command="c")
    base = dict(shape="tiny", precision="fp32", backend="cudnn", peak_mib=1.0)
    rows = [base | dict(variant="nn.LSTM", norm=None, ms=2.0, ratio=1.0, ratio_graphed=2.0),
            base | dict(variant=bench_rnn.GRAPHED, norm=None, ms=1.0, ratio=0.5, ratio_graphed=1.0),
            base | dict(variant="ln", norm="ln", backend="fused", ms=3.0, ratio=1.5, ratio_graphed=3.0),
            base | dict(variant="bn_input", norm="bn_input", backend="fused", ms=float("nan"),
                        ratio=float("nan"), peak_mib=float("nan"), error="capture refused")]
    md = bench_rnn.markdown(rows, [], meta)
    assert "| ln | fused | 3.000 | 1.50 | 3.00 | 1 |" in md
    assert "| bn_input | fused | capture failed: capture refused |" in md


def test_speech_throughput_pads_to_a_fixed_set_of_lengths():
    """The speech rows at a tiny size: utterances/s for both variants, with and without the
    data config's pad_multiple, and the padded batches take fewer distinct lengths."""
    rows = bench_rnn.bench_speech(torch.device("cpu"), 0, 1, 6, {"hidden_size": 4, "num_layers": 1},
                                  lengths=(20, 300))
    assert [(r["norm"], r["pad_multiple"]) for r in rows] == [
        ("none", None), ("none", 100), ("bn_input", None), ("bn_input", 100)]
    assert all(r["utterances_per_s"] > 0 for r in rows)
    assert rows[1]["shapes"] <= 3 < rows[0]["shapes"]
    for pad in (None, 100):
        batch = bench_rnn.speech_batches(3, 4, 20, 300, pad, 41)
        for x, lengths, labels in batch:
            assert (labels != -100).sum(0).tolist() == lengths.tolist()
            assert pad is None and x.shape[0] == int(lengths.max()) or x.shape[0] % 100 == 0
    md = bench_rnn.markdown([], [], dict(hardware="x", device="cpu", git_revision="r", date="d",
                                         warmup=0, reps=1, command="c"), rows)
    assert "| bn_input | reference | multiple of 100 |" in md


def test_population_rows_compare_one_population_with_separate_runs():
    tiny = bench_rnn.Shape("grid tiny", 4, 3, 5, 6, 2)
    rows = bench_rnn.bench_population([tiny, bench_rnn.Shape("ptb tiny", 4, 3, 6, 6, 1)], (1, 3),
                                      torch.device("cpu"), 0, 1)
    assert [(r["shape"], r["norm"], r["M"]) for r in rows] == [
        ("grid tiny", n, M) for n in ("none", "bn_sum") for M in (1, 3)] + [
        ("ptb tiny", n, M) for n in ("none", "bn_recurrent") for M in (1, 3)]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["separate_ms"] / r["population_ms"])
        assert r["tokens_per_s"] == pytest.approx(r["M"] * 4 * 3 / (r["population_ms"] / 1e3))
    assert all(r["backend"] == "reference" for r in rows)  # CPU
    md = "\n".join(bench_rnn.population_markdown(rows))
    assert "| grid tiny | bn_sum | reference | 3 |" in md
    c, grid = make_cfg(["experiment=grid_char_rnn"]), bench_rnn.population_shapes()[:3]
    assert {(s.T, s.H, s.L) for s in grid} == {(c.data.seq_len, c.model.hidden_size, c.model.num_layers)}
    assert [s.B for s in grid] == [32, 64, 128]  # the appendix's batch sizes (its search space)


def test_directions_rows_time_joint_and_apart_on_the_fused_loop():
    """The bidirectional rows at a tiny size under the interpreter: every variant timed both
    ways, on the fused loop, and rendered."""
    shape = bench_rnn.Shape("tiny_bidirectional", 3, 2, 4, 4, 1, True)
    rows = bench_rnn.bench_directions(shape, torch.device("cpu"), 0, 1)
    assert [r["norm"] for r in rows] == list(VARIANTS)
    assert all(r["apart_ms"] > 0 and r["joint_ms"] > 0 for r in rows)
    md = bench_rnn.markdown([], [], dict(hardware="x", device="cpu", git_revision="r", date="d",
                                         warmup=0, reps=1, command="c"), direction_rows=rows)
    assert "## Bidirectional: both directions in one launch per step" in md
    assert md.count("| bn_recurrent |") == 1
