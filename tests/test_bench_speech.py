"""scripts/bench_speech_corpus.py without synthesizing: its 50-hour projection and its report."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_speech_corpus as bench  # noqa: E402


def test_projection_is_the_line_through_the_measured_sizes():
    assert bench.project([(0.5, 2.0)]) == pytest.approx(200.0)  # one size: proportional
    assert bench.project([(1.0, 11.0), (3.0, 13.0)]) == pytest.approx(13.0 + 47.0)  # 10 + t
    assert bench.project([(1.0, 5.0), (3.0, 4.0)]) == 4.0  # noise, not growth: the larger measurement


def _figures(scale):
    opened = {"open_s": 0.1 * scale, "setup_s": 1.0 * scale, "epoch_s": 2.0 * scale,
              "open": {"anon_mib": 200.0, "peak_mib": 10.0 * scale, "file_mib": 1.0},
              "epoch": {"anon_mib": 210.0, "peak_mib": 20.0 * scale, "file_mib": 1.0}}
    return {"write_s": 0.5 * scale, "sha256_s": 0.2 * scale, "verified": opened,
            "unverified": {"open_s": 0.05 * scale, "open": opened["open"]}}


def test_report_states_sizes_and_marks_projections():
    sizes = [{"hours": h, "utterances": 10 * k, "frames": 1000 * k, "shards": k, "bytes": {"pt": 1, "arrow": 2},
              "formats": {key: _figures(k) for key in bench.FORMATS},
              "alternating": {"epoch_s": {"pt_concat": 1.0, "pt_mmap": 1.0, "arrow": 1.0},
                              "epoch_times_s": {"pt_concat": [1.0], "pt_mmap": [1.0], "arrow": [1.0]}}}
             for k, h in ((1, 0.5), (4, 2.0))]
    for key in ("arrow_formatter",):
        for s in sizes:
            del s["formats"][key]["write_s"], s["formats"][key]["sha256_s"], s["formats"][key]["unverified"]
    result = {"meta": {"date": "d", "hardware": "h", "git_revision": "r", "command": "python x",
                       "datasets": "5", "pyarrow": "26", "shard_size": 10, "workers": 2, "tile": 4, "rounds": 1,
                       "load_average": (1.0, 1.0, 1.0)},
              "generation": {"wall_s": 60.0, "hours": 0.5, "utterances": 10, "shards": 1, "rtf_per_process": 15.0},
              "baseline": {"import_datasets_s": 1.0, "anon_mib": 200.0, "peak_mib": 300.0},
              "sizes": sizes}
    md = bench.markdown(result)
    assert "Hardware: h" in md and "Git revision: r" in md and "Command: `python x`" in md
    assert "Projected for 50 h: 6,000 s" in md
    projected = md.split("## Projected to 50 h (not measured")[1]
    # epoch: 2 s at 0.5 h, 8 s at 2 h -> 4 s per hour -> 200 s at 50 h
    assert "| 200 s |" in projected
    assert "with_format('torch') rows | – | – | 10 s | – |" in projected  # not measured: not projected
