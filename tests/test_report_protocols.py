"""The PTB report by protocol: grouping, the authors' metric and batch statistics, the claims
rule, the clip/schedule ablation, and runs that are never averaged in."""
from __future__ import annotations

import math

import pytest

from bnrnn.io import write_json, write_jsonl, write_text
from bnrnn.report import ptb
from bnrnn.report.runs import load_runs


def write_run(root, norm="none", seed=1, valid=120.0, train=80.0, protocol="laurent_code",
              overrides=(), status="completed", epochs=5, protocol_epochs=None, batchstat=True,
              record_protocol=True, name="ptb_small"):
    """A run directory as bnrnn.engine + Hydra + collect_runs leave it. The last epoch is the
    best; the authors' metric is ours + 1 (+ 2 with batch statistics) so columns can be told
    apart."""
    protocol_epochs = protocol_epochs or epochs
    extra = "".join(f"_{o}" for o in overrides)
    run_dir = root / name / norm / f"seed{seed}_{protocol}{extra}"
    rows = []
    for epoch in range(1, epochs + 1):
        scale = 1.0 + 0.5 * (epochs - epoch)  # falling to the final values
        row = {"epoch": epoch, "step": 100 * epoch, "lr": 1.0, "epoch_time": 60.0,
               "wall_time": 60.0 * epoch, "train_tokens_per_s": 1000.0,
               "train_loss": math.log(train * scale), "train_ppl": train * scale,
               "train_ppl_batch_mean": train * scale + 1, "valid_loss": math.log(valid * scale),
               "valid_ppl": valid * scale, "valid_ppl_batch_mean": valid * scale + 1}
        if batchstat and norm.startswith("bn"):
            row |= {"valid_batchstat_ppl": valid * scale + 2,
                    "valid_batchstat_ppl_batch_mean": valid * scale + 3}
        rows.append(row)
    best = min(rows, key=lambda r: r["valid_ppl"]) if rows else None
    test = {"loss": math.log(valid - 4), "ppl": valid - 4, "ppl_batch_mean": valid - 3}
    if batchstat and norm.startswith("bn"):
        test |= {"batchstat_ppl": valid - 2, "batchstat_ppl_batch_mean": valid - 1}
    all_overrides = [f"experiment={name}", f"model.norm={norm}", f"seed={seed}",
                     "device=cpu", "threads=1", "resume=false",
                     *([f"protocol={protocol}"] if record_protocol else []), *overrides]
    final = {"status": status, "error": None, "epochs_completed": len(rows),
             "max_epochs": protocol_epochs, "protocol_epochs": protocol_epochs,
             "shortened": len(rows) < protocol_epochs, "step": 100 * len(rows),
             "wall_time": 60.0 * len(rows), "best_epoch": best and best["epoch"], "best": best,
             "test": test if status == "completed" else None, "selection": "valid_ppl",
             "git_revision": "0" * 40, "hardware": "Test CPU (cpu)", "num_parameters": 1,
             "finished": "2026-12-03T20:00:00+0000", "started": "2026-12-03T19:00:00+0000",
             "name": name, "seed": seed, "norm": norm, "limit_batches": None,
             "command": "python -m bnrnn.train", "overrides": all_overrides}
    if record_protocol:
        final["protocol"] = protocol
    write_json(run_dir / "final.json", final)
    if rows:
        write_jsonl(run_dir / "metrics.jsonl", rows)
    write_text(run_dir / ".hydra" / "config.yaml",
               f"name: {name}\nseed: {seed}\nmodel:\n  norm: {norm}\n"
               + (f"protocol:\n  name: {protocol}\n" if record_protocol else ""))
    write_text(run_dir / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in all_overrides))
    return run_dir


def rows_of(root):
    return {(r.protocol, r.norm, r.extra, r.complete): r for r in ptb.group_rows(load_runs(root))}


def test_rows_are_grouped_by_protocol_and_extra_overrides(tmp_path):
    for seed, valid in ((1, 119.0), (2, 120.0), (3, 121.0)):
        write_run(tmp_path, seed=seed, valid=valid)
    write_run(tmp_path, seed=1, valid=123.6, protocol="laurent_text", record_protocol=False,
              epochs=3, protocol_epochs=3)  # an older run: no protocol recorded
    write_run(tmp_path, seed=1, valid=120.7, protocol="laurent_text", record_protocol=False,
              epochs=3, overrides=("data.batch_size=20",))  # the older Zaremba-batch row
    write_run(tmp_path, seed=1, valid=121.0, overrides=("trainer.clip_grad_norm=10",))
    rows = rows_of(tmp_path)
    assert set(rows) == {("laurent_code", "none", "", True),
                         ("laurent_text", "none", "", True),
                         ("laurent_text", "none", "data.batch_size=20", True),
                         ("laurent_code", "none", "trainer.clip_grad_norm=10", True)}
    code = rows[("laurent_code", "none", "", True)]
    assert [r.seed for r in code.runs] == [1, 2, 3]
    assert code.cell("valid") == "120.00 ± 1.00 (n=3)"
    assert code.cell("valid_bm") == "121.00 ± 1.00 (n=3)"  # the authors' metric, beside ours
    assert code.cell("train_bm") == "81.00 ± 0.00 (n=3)"  # at the best-valid epoch
    # the older rows keep their labels and papers: Laurent for the text, Zaremba for batch 20
    assert ptb._paper(rows[("laurent_text", "none", "", True)]) == ((78.5, 119.2), None)
    assert ptb._paper(rows[("laurent_text", "none", "data.batch_size=20", True)]) == \
        (None, (120.7, 114.5))
    assert ptb._paper(rows[("laurent_code", "none", "trainer.clip_grad_norm=10", True)]) == \
        (None, None)

    table = list(rows.values())
    by = {(r["protocol"], r["overrides"]): r for r in ptb.CSV.records(table)}
    assert by[("laurent_code", "")]["best_valid_ppl_mean"] == pytest.approx(120.0)
    assert by[("laurent_code", "")]["best_valid_ppl_std"] == pytest.approx(1.0)
    assert by[("laurent_code", "")]["valid_ppl_batch_mean_at_best_mean"] == pytest.approx(121.0)
    assert by[("laurent_code", "")]["diff_valid_vs_laurent"] == pytest.approx(0.8)
    assert by[("laurent_text", "data.batch_size=20")]["diff_valid_vs_zaremba"] == pytest.approx(0.0)
    md = ptb.PERPLEXITY.markdown(ptb.group_rows(load_runs(tmp_path)))
    assert "| small | laurent_code | baseline | complete | 1, 2, 3 | 5/5 |" in md
    assert "| small | laurent_code | baseline [trainer.clip_grad_norm=10] | complete | 1 |" in md
    assert "| small | laurent_text | baseline [data.batch_size=20] | complete |" in md


def test_bn_rows_give_batch_statistics_beside_population_ones(tmp_path):
    for seed in (1, 2, 3):
        write_run(tmp_path, norm="bn_input", seed=seed, valid=120.0 + seed)
    write_run(tmp_path, norm="ln", seed=1, valid=125.0)  # no batch norm: no batch statistics
    rows = rows_of(tmp_path)
    bn = rows[("laurent_code", "bn_input", "", True)]
    assert bn.mean("valid") == pytest.approx(122.0) and bn.mean("valid_bs") == pytest.approx(124.0)
    # as the authors' code measured: their metric on batch statistics
    assert bn.mean("valid_as_paper") == pytest.approx(125.0)
    ln = rows[("laurent_code", "ln", "", True)]
    assert ln.cell("valid_bs") == "—" and ln.mean("valid_as_paper") == pytest.approx(126.0)
    evaluation = ptb.EVALUATION.markdown(list(rows.values()))
    line = next(l for l in evaluation.splitlines() if "BN input" in l)
    assert "122.00 ± 1.00 (n=3) | 123.00 ± 1.00 (n=3) | 124.00 ± 1.00 (n=3) | 125.00 ± 1.00 (n=3) " \
           "| 125.00 ± 1.00 (n=3) | 120.9 | +4.1 (+3.4 %) |" in line


def test_the_claims_rule():
    base = [120.0, 121.0, 122.0]  # mean 121, std 1
    assert ptb.compare_means(base, [130.0, 131.0, 132.0])["outcome"] == "higher"
    assert ptb.compare_means(base, [110.0, 111.0, 112.0])["outcome"] == "lower"
    noisy = ptb.compare_means(base, [118.0, 121.0, 126.0])  # Δ 0.67, spread ~4.7
    assert noisy["outcome"] == "within noise"
    assert noisy["threshold"] == pytest.approx(2 * math.sqrt(1 / 3 + (49 / 3) / 3))
    assert noisy["delta"] == pytest.approx(121.0 + 2 / 3 - 121.0)
    assert ptb.compare_means(base, [130.0, 131.0])["outcome"] == "not yet evidence (n=3, 2)"
    # a difference just inside 2 σ is noise, just outside it is not
    edge = 2 * math.sqrt(2 / 3)
    assert ptb.compare_means(base, [x + edge - 1e-6 for x in base])["outcome"] == "within noise"
    assert ptb.compare_means(base, [x + edge + 1e-6 for x in base])["outcome"] == "higher"


def claims_table(root) -> dict[tuple[str, str], str]:
    md = ptb.claims_section(ptb.group_rows(load_runs(root)))
    out = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ptb.PROTOCOLS:
            out[(cells[0], cells[2])] = cells[7]
    return out


def test_claims_say_yes_no_within_noise_and_not_yet(tmp_path):
    # laurent_code, n = 3: BN trains lower (yes) and validates worse (not better: yes)
    for seed, (bt, bv) in enumerate(((80.0, 120.0), (81.0, 121.0), (82.0, 122.0)), 1):
        write_run(tmp_path / "a", seed=seed, train=bt, valid=bv)
        write_run(tmp_path / "a", norm="bn_input", seed=seed, train=bt - 20, valid=bv + 10)
    # laurent_text, n = 2 and 3: not yet evidence
    for seed in (1, 2):
        write_run(tmp_path / "a", seed=seed, protocol="laurent_text", train=40.0 + seed)
    for seed in (1, 2, 3):
        write_run(tmp_path / "a", norm="bn_input", seed=seed, protocol="laurent_text",
                  train=30.0 + seed)
    claims = claims_table(tmp_path / "a")
    assert claims[("laurent_code", "best train ppl")] == "yes"
    assert claims[("laurent_code", "best valid ppl (population)")] == "yes"
    assert claims[("laurent_text", "best train ppl")] == "not yet evidence (n=2, 3)"
    # BN trains higher and validates better: no, no; a noisy validation: within noise
    for seed, (bt, bv, nv) in enumerate(((80.0, 120.0, 118.0), (81.0, 121.0, 121.0),
                                         (82.0, 122.0, 126.0)), 1):
        write_run(tmp_path / "b", seed=seed, train=bt, valid=bv)
        write_run(tmp_path / "b", norm="bn_input", seed=seed, train=bt + 20, valid=bv - 10)
        write_run(tmp_path / "c", seed=seed, train=bt, valid=bv)
        write_run(tmp_path / "c", norm="bn_input", seed=seed, train=bt - 20, valid=nv)
    claims = claims_table(tmp_path / "b")
    assert claims[("laurent_code", "best train ppl")] == "no"
    assert claims[("laurent_code", "best valid ppl (population)")] == "no"
    assert claims[("laurent_text", "best train ppl")] == "not yet evidence (n=0, 0)"
    assert claims_table(tmp_path / "c")[("laurent_code", "best valid ppl (population)")] == \
        "within noise"


def test_ablation_arithmetic():
    e = ptb.ablation_effects(code5=119.5, code10=121.0, text5=122.0, text10=123.6, paper=119.2)
    assert e["gap"] == pytest.approx(4.4)
    assert e["schedule_at_clip10"] == pytest.approx(2.6)
    assert e["clip_at_code_schedule"] == pytest.approx(1.5)
    assert e["clip_at_text_schedule"] == pytest.approx(1.6)
    assert e["schedule_at_clip5"] == pytest.approx(2.5)
    # each path adds up to the whole way from the text's cell to the code's
    assert e["schedule_at_clip10"] + e["clip_at_code_schedule"] == pytest.approx(123.6 - 119.5)
    assert e["clip_at_text_schedule"] + e["schedule_at_clip5"] == pytest.approx(123.6 - 119.5)
    assert e["schedule_mean"] == pytest.approx(2.55) and e["clip_mean"] == pytest.approx(1.55)
    assert e["interaction"] == pytest.approx(0.1) and e["residual"] == pytest.approx(0.3)
    partial = ptb.ablation_effects(code5=119.5, code10=121.0, text5=None, text10=123.6, paper=119.2)
    assert partial["schedule_at_clip10"] == pytest.approx(2.6)
    assert partial["clip_at_text_schedule"] is None and partial["schedule_mean"] is None


def test_ablation_section_from_runs_names_missing_and_thin_cells(tmp_path):
    for seed, v in ((1, 119.0), (2, 119.5), (3, 120.0)):
        write_run(tmp_path, seed=seed, valid=v)  # code, clip 5: mean 119.5
    for seed, v in ((1, 120.0), (2, 121.0), (3, 122.0)):
        write_run(tmp_path, seed=seed, valid=v, overrides=("trainer.clip_grad_norm=10",))
    write_run(tmp_path, seed=1, valid=123.6, protocol="laurent_text", record_protocol=False,
              epochs=3)
    text = ptb.ablation_section(ptb.group_rows(load_runs(tmp_path)))
    assert "minus the paper's 119.2 = +4.40" in text
    assert "Clip and schedule together (the text's protocol → the code's): +4.10 (93 % of the " \
           "gap) [not yet evidence (n=3, 1)]." in text
    assert "the code's schedule at clip 10 +2.60 (59 % of the gap) [not yet evidence (n=3, 1)]" in text
    assert "then clip 10 → 5 at the code's schedule +1.50 (34 % of the gap) " \
           "[beyond the seed spread: 2σ = 1.29]" in text
    assert "Left after both (the code's protocol against the paper): +0.30; measured with the " \
           "authors' metric, as the paper's number was, +1.30." in text
    assert "Missing cells (n=0): laurent_text + trainer.clip_grad_norm=5." in text
    assert "Fewer than 3 seeds, so not yet evidence: laurent_text (n=1)." in text
    assert "Path 2" not in text  # its first cell is missing
    # the two protocols evaluate on 32 and 10 streams, which moves the authors' metric itself
    assert "evaluation streams 32 vs 10" in text
    assert "only the 32-stream cells' compare with the paper's number" in text


def test_diverged_and_shortened_runs_are_never_averaged_in(tmp_path):
    for seed, v in ((1, 119.0), (2, 120.0), (3, 121.0)):
        write_run(tmp_path, seed=seed, valid=v)
        write_run(tmp_path, norm="bn_input", seed=seed, valid=v + 1, train=60.0)
    write_run(tmp_path, seed=4, valid=400.0, status="diverged", epochs=2, protocol_epochs=5)
    write_run(tmp_path, seed=5, valid=90.0, epochs=3, protocol_epochs=5)  # shortened
    write_run(tmp_path, seed=6, valid=150.0, status="running", epochs=1, protocol_epochs=5)
    rows = ptb.group_rows(load_runs(tmp_path))
    complete = [r for r in rows if r.complete and r.norm == "none"]
    assert len(complete) == 1 and [r.seed for r in complete[0].runs] == [1, 2, 3]
    assert complete[0].mean("valid") == pytest.approx(120.0)
    marked = sorted(r.status for r in rows if not r.complete)
    assert marked == ["diverged after 2/5 epochs", "running or killed at 1/5 epochs",
                      "shortened: 3/5 epochs"]
    ablation = ptb.ablation_section(rows)
    line = next(l for l in ablation.splitlines() if l.startswith("| laurent_code | — |"))
    assert "| 3 | 3 | 120.00 ± 1.00 (n=3) |" in line  # 3 complete, 3 not complete
    write_run(tmp_path, seed=1, valid=120.0, protocol="laurent_text", status="running", epochs=2,
              protocol_epochs=15, overrides=("trainer.clip_grad_norm=5",))
    ablation = ptb.ablation_section(ptb.group_rows(load_runs(tmp_path)))
    assert "Missing cells (n=0): laurent_code + trainer.clip_grad_norm=10; laurent_text + " \
           "trainer.clip_grad_norm=5 (1 not complete); laurent_text." in ablation
    claims = ptb.claims_section(rows)
    assert "120.00 ± 1.00 (n=3)" in claims and "400" not in claims
    by = {(r["norm"], r["status"]): r for r in ptb.CSV.records(rows)}
    assert by[("none", "complete")]["n_runs"] == 3
    assert by[("none", "diverged after 2/5 epochs")]["diff_valid_vs_laurent"] is None
    assert by[("none", "diverged after 2/5 epochs")]["best_valid_ppl_std"] is None


def test_protocol_table_is_composed_from_the_configs():
    settings = {(s["protocol"], s["size"]): s for s in ptb.protocol_settings(sizes=("ptb_small",))}
    code, text = settings[("laurent_code", "ptb_small")], settings[("laurent_text", "ptb_small")]
    assert (code["clip"], code["epochs"], code["after_epoch"], code["every"]) == (5, 5, 4, 4)
    assert (code["eval_batch_size"], code["eval_batch_stats"]) == (32, True)
    assert (text["clip"], text["epochs"], text["after_epoch"]) == (10, 15, 6)
    assert settings[("zaremba", "ptb_small")]["batch_size"] == 20
    table = ptb.protocol_table(list(settings.values()))
    assert "| small | laurent_code | 32 | 20 | 5 | 5 | 1 for epochs 1–4, ÷2 for epoch 5 (the last) |" in table
    assert "1 for epochs 1–6, ÷2 each epoch from epoch 7; last epoch 0.00195" in table
    assert ptb._schedule_text(1 / 1.15, 14, 1, 55).startswith("1 for epochs 1–14, ÷1.15 each epoch from epoch 15")
