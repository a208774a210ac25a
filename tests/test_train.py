"""The trainer: resume equivalence, divergence, run-directory contents, CLI errors."""
import json

import pytest
import torch
from hydra.utils import instantiate

from bnrnn import checkpoint
from bnrnn.schedules import decay_after
from tests.helpers import cli, make_cfg, strip_times, train

TINY = ["model.hidden_size=16", "data.limit_batches=4", "data.bptt=5", "data.batch_size=4",
        "quiet=true", "device=cpu", "trainer.check_every=1"]


@pytest.fixture
def tiny(ptb_root):
    return ["experiment=ptb_small", f"data.root={ptb_root}", *TINY]


def test_a_count_on_the_device_gives_the_same_metrics(tmp_path):
    """A model may count its units in a tensor (speech: unpadded frames); the trainer sums it
    without reading it back each step, and the metrics equal those of an int count."""
    from bnrnn.contracts import StepOutput
    from bnrnn.engine import Trainer, TrainerConfig

    class Data:
        stateful, dims = False, {}

        def num_batches(self, split):
            return 5

        def batches(self, split, epoch=0):
            g = torch.Generator().manual_seed(0)
            for _ in range(5):
                yield (torch.randn(3, 2, generator=g), torch.randint(1, 7, (), generator=g))

    class Model(torch.nn.Module):
        selection = "loss"

        def __init__(self, tensor_count):
            super().__init__()
            self.w, self.tensor_count = torch.nn.Parameter(torch.ones(())), tensor_count

        def forward(self, batch, state=None):
            x, n = batch
            loss = (self.w * x).square().sum()
            return StepOutput(objective=loss, loss_sum=loss.detach(),
                              count=n if self.tensor_count else int(n))

        @staticmethod
        def metrics(totals):
            return {"loss": totals["loss_sum"] / totals["count"], "count": totals["count"]}

    results = []
    for tensor_count in (False, True):
        model = Model(tensor_count)
        trainer = Trainer(model=model, data=Data(), optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                          scheduler=None, config=TrainerConfig(max_epochs=1, progress=False, check_every=2),
                          run_dir=tmp_path, device=torch.device("cpu"), info={"git_revision": "x"})
        out = trainer.run_epoch("train", train=True)
        results.append({k: v for k, v in out.items() if k not in ("seconds", "tokens_per_s")})
    assert results[0] == results[1] and isinstance(results[1]["count"], int)


def test_ptb_protocol_values():
    small, medium, large = (make_cfg([f"experiment=ptb_{s}"]) for s in ("small", "medium", "large"))
    assert (small.model.hidden_size, small.data.bptt, small.trainer.clip_grad_norm,
            small.trainer.max_epochs, small.data.batch_size) == (200, 20, 10, 15, 32)
    assert (medium.model.hidden_size, medium.model.dropout, medium.data.bptt,
            medium.trainer.max_epochs) == (650, 0.5, 35, 40)
    assert (large.model.hidden_size, large.model.init_range, large.schedule.after_epoch,
            large.trainer.max_epochs) == (1500, 0.04, 15, 55)
    assert medium.schedule.decay == pytest.approx(1 / 1.2) and large.schedule.decay == pytest.approx(1 / 1.15)


def test_lr_schedule_halves_after_sixth_epoch():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = decay_after(opt, decay=0.5, after_epoch=6)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1, 1, 1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_run_directory_contents(tiny, tmp_path):
    objective, final, rows = train([*tiny, "trainer.max_epochs=2"], tmp_path)
    assert final["status"] == "completed" and final["epochs_completed"] == 2
    assert final["shortened"] is True and final["protocol_epochs"] == 15  # 2 of 15, and limited data
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "step", "lr", "train_ppl", "valid_ppl", "train_tokens_per_s", "wall_time"):
        assert key in rows[0]
    assert rows[1]["step"] == 8  # 4 windows per epoch
    best = min(rows, key=lambda r: r["valid_ppl"])
    assert final["best_epoch"] == best["epoch"] and objective == best["valid_ppl"]
    assert final["test"]["ppl"] > 1 and final["hardware"] and final["git_revision"]
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")  # weights_only load works
    assert state["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng", "config"} <= set(state)
    # perplexity is exp of the token-weighted mean NLL
    assert rows[0]["valid_ppl"] == pytest.approx(torch.tensor(rows[0]["valid_loss"]).exp().item())


def test_resume_reproduces_uninterrupted_run(tiny, tmp_path):
    common = [*tiny, "trainer.max_epochs=3", "model.dropout=0.3", "schedule.after_epoch=1"]
    _, full_final, full_rows = train(common, tmp_path / "full")

    _, cut_final, cut_rows = train([*common, "trainer.stop_after_epochs=1"], tmp_path / "cut")
    assert cut_final["status"] == "interrupted" and [r["epoch"] for r in cut_rows] == [1]
    _, res_final, res_rows = train([*common, "resume=true"], tmp_path / "cut")

    assert res_final["status"] == "completed"
    assert strip_times(res_rows) == strip_times(full_rows)  # identical metrics, epoch by epoch
    assert res_final["test"] == full_final["test"]
    assert res_final["best_epoch"] == full_final["best_epoch"]


def test_resume_drops_metrics_newer_than_checkpoint(tiny, tmp_path):
    train([*tiny, "trainer.max_epochs=1"], tmp_path)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a line written after the last checkpoint
        f.write(json.dumps({"epoch": 2, "valid_ppl": 1.0}) + "\n")
    _, final, rows = train([*tiny, "trainer.max_epochs=2", "resume=true"], tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["valid_ppl"] != 1.0


def test_divergence_is_a_status_not_a_crash(tiny, tmp_path):
    # epoch 1 at lr 1, then lr = inf without clipping: the weights and the loss become non-finite in epoch 2
    objective, final, rows = train([*tiny, "trainer.max_epochs=3", "trainer.clip_grad_norm=null",
                                    "schedule.after_epoch=1", "schedule.decay=inf"], tmp_path)
    assert final["status"] == "diverged" and "non-finite" in final["error"]
    assert objective == float("inf")
    assert [r["epoch"] for r in rows] == [1]  # the metrics written before divergence are kept
    assert final["best_epoch"] == 1 and final["test"] is None


def test_cli_runs_and_writes_run_dir(ptb_root, tmp_path):
    out = tmp_path / "run"
    p = cli(["experiment=ptb_small", f"data.root={ptb_root}", *TINY, "trainer.max_epochs=1",
             f"hydra.run.dir={out}"])
    assert p.returncode == 0, p.stderr
    final = json.loads((out / "final.json").read_text())
    assert final["status"] == "completed" and final["command"].startswith("python -m bnrnn.train")
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "metrics.jsonl").is_file()


def test_cli_config_typo_names_the_key(tmp_path):
    p = cli(["model.nrom=ln", f"hydra.run.dir={tmp_path}"])
    assert p.returncode != 0 and "nrom" in p.stderr


def test_unknown_norm_names_the_choices(ptb_root):
    cfg = make_cfg(["experiment=ptb_small", f"data.root={ptb_root}", "model.norm=bn"])
    with pytest.raises(Exception, match=r"norm must be one of .*bn_input.*got 'bn'"):
        instantiate(cfg.model, vocab_size=10)


def test_max_time_ends_a_run_cleanly_and_marks_it_shortened(tiny, tmp_path):
    # a time box smaller than one epoch: the first epoch runs, the second would overrun it
    objective, final, rows = train([*tiny, "trainer.max_epochs=3", "trainer.max_time=1e-6"], tmp_path)
    assert [r["epoch"] for r in rows] == [1]
    assert final["status"] == "completed" and final["shortened"] is True
    assert final["test"]["ppl"] > 1 and "max_time" in final["stop_reason"]
    assert objective == rows[0]["valid_ppl"]


def test_reestimate_option_replaces_population_statistics_before_evaluation(tiny, tmp_path):
    _, final, _ = train([*tiny, "model.norm=bn_input", "trainer.reestimate_batches=2"], tmp_path)
    assert final["status"] == "completed"
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")["model"]
    tracked = best["rnn.layers.0.norm_ih.num_batches_tracked"]
    # saved after the validation pass: the statistics of exactly the 2 re-estimation batches
    assert tracked[:5].tolist() == [2] * 5 and tracked[5:].sum() == 0  # bptt 5: steps 0..4


def test_wandb_logger_offline_and_resumable(tiny, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train([*tiny, "logger=wandb", "trainer.max_epochs=1"], tmp_path)
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    train([*tiny, "logger=wandb", "trainer.max_epochs=2", "resume=true"], tmp_path)
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id  # the same wandb run continues



PAPER = ["+paper.source=test protocol", "+paper.values={optim.lr: 1, model.hidden_size: 8}",
         "+paper.substitutes=[corpus: a fixture]"]


def test_a_run_off_its_published_protocol_is_marked_scaled(tiny, tmp_path):
    """An experiment's paper: values are compared with the run's resolved configuration; every
    difference is listed in final.json and makes the run scaled."""
    _, final, _ = train([*tiny, "model.hidden_size=6", *PAPER], tmp_path)
    assert final["paper"] == "test protocol" and final["scaled"] is True
    assert final["deviations"] == ["model.hidden_size = 6 (protocol: 8)"]
    assert final["substitutes"] == ["corpus: a fixture"]


def test_equal_values_are_no_deviation_and_a_paper_value_must_name_a_key(tiny):
    from bnrnn.config import ConfigError, deviations, validate

    # 1.0 for 1: the same number written another way
    assert deviations(validate(make_cfg([*tiny, "model.hidden_size=8", "optim.lr=1.0", *PAPER]))) == []
    with pytest.raises(ConfigError, match=r"paper\.values\.model\.hiden_size.*names no key"):
        validate(make_cfg([*tiny, "+paper.source=x", "+paper.values={model.hiden_size: 8}"]))


def test_a_resumed_run_records_the_run_not_the_invocation(tiny, tmp_path):
    """final.json and .hydra/ of a resumed run: the command that trains it from scratch (no
    resume=true), the first segment's start, and one `resumed` entry per continuation; and
    resuming a complete run leaves its record byte for byte as it was."""
    common = [*tiny, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}"]
    final = lambda: json.loads((tmp_path / "final.json").read_text())  # noqa: E731
    assert cli([*common, "trainer.stop_after_epochs=1"]).returncode == 0
    cut = final()
    assert cut["status"] == "interrupted"
    assert cli([*common, "resume=true"]).returncode == 0
    done = final()
    assert done["status"] == "completed" and "resume" not in done["command"]
    assert not any(o.startswith("resume") for o in done["overrides"])
    assert "resume" not in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert "resume: false" in (tmp_path / ".hydra" / "config.yaml").read_text()
    assert done["started"] == cut["started"] and done["git_revision"] == cut["git_revision"]
    assert [r["epoch"] for r in done["resumed"]] == [1]
    before = (tmp_path / "final.json").read_bytes()
    again = cli([*common, "resume=true"])
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "final.json").read_bytes() == before


def test_the_fused_backend_off_cuda_is_refused_before_the_run_directory(tiny, tmp_path, monkeypatch):
    from bnrnn.config import ConfigError
    from bnrnn.nn import fused

    monkeypatch.setattr(fused, "interpreting", lambda: False)  # as on a user's CPU machine
    with pytest.raises(ConfigError, match="model.norm_options.backend=fused.*CUDA"):
        train([*tiny, "model.norm=bn_input", "model.norm_options.backend=fused"], tmp_path / "run")
    assert not (tmp_path / "run").exists()
