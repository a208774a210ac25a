#!/usr/bin/env python
"""Benchmark every NormLSTM variant against cuDNN ``nn.LSTM`` (``make bench``).

For each shape (PTB small/medium/large, the speech stack) and precision policy (fp32 with TF32
allowed on both sides; bf16 autocast on both sides) it times one training step of the recurrent
stack alone — forward and backward of a fixed input, gradients set to None between steps — as
the median of ``--reps`` steps after ``--warmup`` steps (CUDA events on GPU, perf_counter on CPU),
with the peak memory of the timed steps, and the ratio to ``nn.LSTM`` measured in the same process
and run. Then it times the full PTB training step (embedding, LSTM, decoder, loss, backward, clip,
SGD) and the evaluation step of ``WordLM`` per size and variant, turns them into tokens/s and into
the estimated wall time of the full Table 2 protocol (12 runs). Writes ``--out`` (markdown) and a
JSON with every number beside it.

    python scripts/bench_rnn.py --device cuda --out results/bench.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bnrnn.data.ptb import SPLIT_TOKENS, VOCAB_SIZE, num_windows  # noqa: E402
from bnrnn.data.speech.batching import FEATURE_DIM  # noqa: E402
from bnrnn.io import git_revision, hardware, write_json, write_text  # noqa: E402
from bnrnn.nn import VARIANTS, NormLSTM  # noqa: E402
from bnrnn.train import CONFIG_DIR  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    B: int
    I: int
    H: int
    L: int
    bidirectional: bool = False
    stats: str = "frame"


@cache
def experiment(name: str) -> dict:
    """configs/experiment/<name>.yaml composed as ``python -m bnrnn.train experiment=<name>`` would
    (its default protocol), resolved: every size, batch and epoch count below comes from it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"])
    return OmegaConf.to_container(cfg, resolve=True)


# Table 2: the sizes x variants that `+sweep=ptb` runs (configs/sweep/ptb.yaml)
_TABLE2 = OmegaConf.load(Path(CONFIG_DIR) / "sweep" / "ptb.yaml").hydra.sweeper.params
PTB_SIZES = tuple(str(_TABLE2.experiment).split(","))
TABLE2_NORMS = tuple(str(_TABLE2["model.norm"]).split(","))
SPEECH_FRAMES = 800  # a typical training utterance (8 s); the experiment drops those over max_frames


@cache
def shape_of(name: str) -> Shape:
    """A benchmarked shape: a PTB experiment's (bptt x batch, hidden = input), the speech stack
    of experiment=speech_librispeech, or ``tiny`` (the test's)."""
    if name == "tiny":
        return Shape("tiny", 5, 4, 8, 8, 2)
    if name == "char_ptb":  # Cooijmans' char-level LSTM: one layer on one-hot characters
        c = experiment("cooijmans_char_ptb")
        vocab = 50  # PTB's characters with the end-of-line (docs/reference.md §4)
        return Shape("char_ptb", c["data"]["seq_len"], c["data"]["batch_size"],
                     c["model"].get("embedding_size") or vocab, c["model"]["hidden_size"],
                     c["model"]["num_layers"])
    if name == "speech":
        c = experiment("speech_librispeech")
        return Shape("speech", SPEECH_FRAMES, c["data"]["batch_size"], FEATURE_DIM,
                     c["model"]["hidden_size"], c["model"]["num_layers"], True, c["model"]["stats"])
    c = experiment(name)
    H = c["model"]["hidden_size"]
    return Shape(name, c["data"]["bptt"], c["data"]["batch_size"], H, H, c["model"]["num_layers"])


# (label, norm, backend): cuDNN nn.LSTM is the reference every ratio is taken against, eager and
# (backend "graph", CUDA only) captured once as a CUDA graph and replayed, as our fused loops
# replay theirs; our own loop without normalization the control; then every variant on the
# backend training picks
CANDIDATES = [("nn.LSTM", None, None), ("nn.LSTM, CUDA graph", None, "graph"),
              ("none, our loop (control)", "none", "fused"),
              *((norm, norm, "auto") for norm in VARIANTS if norm != "none")]
GRAPHED = "nn.LSTM, CUDA graph"
# speed targets at the PTB medium shape (ratio of step time to cuDNN), and 2x everywhere
TARGETS = {"bn_input": 1.1, "bn_recurrent": 1.5, "ln": 1.5}
ANY_SHAPE_LIMIT = 2.0


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn, warmup: int, reps: int) -> tuple[float, float]:
        """Median milliseconds of ``fn()`` and the peak memory (MiB) of the timed calls."""
        for _ in range(warmup):
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
            peak = float("nan")
        return statistics.median(times), peak


def autocast(device, precision, cache: bool = True):
    # a captured graph must not reuse autocast's cast cache across replays (CUDA graphs docs)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=cache)


def rnn_step(model, x, device, precision, *, zero: bool = True, cache: bool = True):
    def step():
        if zero:
            for p in model.parameters():
                p.grad = None
        with autocast(device, precision, cache):
            out, _ = model(x)
        out.float().sum().backward()
    return step


def graphed_step(model, x, device, precision):
    """``rnn_step`` captured once as a CUDA graph; returns its replay. Gradients are allocated by
    the captured backward (they are None at capture), so every replay writes them afresh, as the
    eager step does after setting them to None."""
    step = rnn_step(model, x, device, precision, zero=False, cache=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (cuDNN picks its algorithms)
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def build_rnn(shape: Shape, norm, backend, device):
    if norm is None:
        return nn.LSTM(shape.I, shape.H, shape.L, bidirectional=shape.bidirectional).to(device)
    # sequence-wise statistics exist only for the input term: where the variant normalizes it
    stats = shape.stats if VARIANTS[norm].ih is not None else "frame"
    return NormLSTM(shape.I, shape.H, shape.L, bidirectional=shape.bidirectional, norm=norm, stats=stats,
                    backend=backend, max_steps=shape.T).to(device)


def bench_rnn(shapes, precisions, device, warmup, reps) -> list[dict]:
    timer, rows = Timer(device), []
    for shape in shapes:
        x = torch.randn(shape.T, shape.B, shape.I, device=device)
        for precision in precisions:
            base = None
            for label, norm, backend in CANDIDATES:
                if backend == "graph" and device.type != "cuda":
                    continue  # CUDA graphs exist only on CUDA
                if backend == "fused" and device.type != "cuda":
                    backend = "reference"  # the fused kernels need a GPU (the interpreter is for tests)
                model = build_rnn(shape, norm, backend, device).train()
                used = model.resolve_backend(x) if norm else "cudnn" if device.type == "cuda" else "aten"
                row = dict(shape=shape.name, precision=precision, variant=label, norm=norm, backend=used)
                try:
                    step = (graphed_step(model, x, device, precision) if backend == "graph"
                            else rnn_step(model, x, device, precision))
                except RuntimeError as e:  # a capture cuDNN refuses is a finding, not a crash
                    rows.append(row | dict(ms=math.nan, ratio=math.nan, peak_mib=math.nan,
                                           error=str(e).splitlines()[0]))
                    print(f"{shape.name:10s} {precision:4s} {label:22s} capture failed: {rows[-1]['error']}")
                    continue
                ms, peak = timer(step, warmup, reps)
                base = ms if label == "nn.LSTM" else base
                rows.append(row | dict(ms=ms, ratio=ms / base, peak_mib=peak))
                print(f"{shape.name:10s} {precision:4s} {label:22s} {used:9s} {ms:9.3f} ms  "
                      f"x{ms / base:5.2f}  peak {peak:8.1f} MiB", flush=True)
                del model
            graph = next((r["ms"] for r in rows if r["shape"] == shape.name and r["precision"] == precision
                          and r["variant"] == GRAPHED and not math.isnan(r["ms"])), None)
            for r in rows:
                if r["shape"] == shape.name and r["precision"] == precision and graph:
                    r["ratio_graphed"] = r["ms"] / graph
    return rows


def wordlm_steps(model, opt, x, xe, clip):
    """One PTB training step (as the trainer takes it: objective, backward, gradient-norm clip,
    optimizer step) on ``x`` and one evaluation step on ``xe``."""
    def train_step():
        model.train()
        out = model((x, x), None)
        opt.zero_grad(set_to_none=True)
        out.objective.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    @torch.no_grad()
    def eval_step():
        model.eval()
        model((xe, xe), None)

    return train_step, eval_step


def bench_ptb(sizes, device, warmup, reps) -> list[dict]:
    """Full WordLM training and evaluation steps at each PTB size, built from the experiment's
    model, optimizer, batch sizes, window and clip (fp32/TF32, the runs' policy)."""
    timer, rows = Timer(device), []
    for size in sizes:
        c = experiment(size)
        epochs, bptt = c["trainer"]["max_epochs"], c["data"]["bptt"]
        B, B_eval = c["data"]["batch_size"], c["data"]["eval_batch_size"]
        for norm in TABLE2_NORMS:  # the experiment's backend (auto), as in training
            model = instantiate(c["model"], vocab_size=VOCAB_SIZE, norm=norm).to(device)
            opt = instantiate(c["optim"], params=model.parameters())
            x = torch.randint(0, VOCAB_SIZE, (bptt, B), device=device)
            xe = torch.randint(0, VOCAB_SIZE, (bptt, B_eval), device=device)
            train_step, eval_step = wordlm_steps(model, opt, x, xe, c["trainer"]["clip_grad_norm"])
            train_ms, peak = timer(train_step, warmup, reps)
            eval_ms, _ = timer(eval_step, warmup, reps)
            steps = num_windows(torch.empty(SPLIT_TOKENS["train"] // B), bptt)
            evals = sum(num_windows(torch.empty(SPLIT_TOKENS[s] // B_eval), bptt) for s in ("valid", "test"))
            epoch_s = (steps * train_ms + evals * eval_ms) / 1e3
            rows.append(dict(size=size, norm=norm, backend=model.rnn.resolve_backend(x.float()),
                             train_step_ms=train_ms, eval_step_ms=eval_ms, peak_mib=peak,
                             tokens_per_s=B * bptt / (train_ms / 1e3), epoch_s=epoch_s,
                             protocol_epochs=epochs, protocol_hours=epochs * epoch_s / 3600))
            print(f"{size:10s} {norm:13s} train step {train_ms:8.3f} ms ({rows[-1]['tokens_per_s']:9.0f} tok/s)"
                  f"  eval step {eval_ms:7.3f} ms  epoch ~{epoch_s:7.1f} s", flush=True)
    return rows


def speech_batches(n: int, B: int, lo: int, hi: int, pad_multiple: int | None,
                   num_classes: int, seed: int = 0) -> list[tuple]:
    """``n`` training batches of the speech experiment's kind: B utterances of similar length
    (bucketing: within 5 % of a centre drawn uniformly from [lo, hi]), random features and
    labels, T padded as ``SpeechData`` pads it (to a multiple of ``pad_multiple`` if given)."""
    from bnrnn.data.speech.batching import IGNORE

    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        centre = int(torch.randint(lo, hi + 1, (), generator=g))
        lengths = (centre * (1 - 0.05 * torch.rand(B, generator=g))).long().clamp(min=1)
        T = int(lengths.max())
        if pad_multiple:
            T = -(-T // pad_multiple) * pad_multiple
        labels = torch.randint(0, num_classes, (T, B), generator=g)
        labels[torch.arange(T)[:, None] >= lengths[None, :]] = IGNORE
        batches.append((torch.randn(T, B, FEATURE_DIM, generator=g), lengths, labels))
    return batches


def bench_speech(device, warmup: int, reps: int, n_batches: int, model_overrides: dict | None = None,
                 lengths: tuple[int, int] = (200, 1300)) -> list[dict]:
    """Utterances per second of the speech experiment's full training step (features -> 5 x
    BiLSTM -> loss -> backward -> SGD), baseline and sequence-wise BN, over ``n_batches``
    bucketed batches of varied length: padded to the longest utterance, and to the data
    config's ``pad_multiple`` (a fixed set of lengths, so the fused loop's CUDA graphs replay)."""
    c = experiment("speech_librispeech")
    pad = c["data"]["pad_multiple"]
    timer, rows = Timer(device), []
    for norm in ("none", "bn_input"):
        model = instantiate({**c["model"], **(model_overrides or {})}, feature_dim=FEATURE_DIM,
                            num_classes=41, norm=norm).to(device)
        opt = instantiate(c["optim"], params=model.parameters())
        for pad_multiple in (None, pad):
            batches = [tuple(t.to(device) for t in b) for b in
                       speech_batches(n_batches, c["data"]["batch_size"], *lengths, pad_multiple, 41)]

            def epoch():
                for batch in batches:
                    opt.zero_grad(set_to_none=True)
                    model(batch).objective.backward()
                    opt.step()

            ms, peak = timer(epoch, warmup, reps)
            utterances = n_batches * c["data"]["batch_size"]
            rows.append(dict(norm=norm, backend=model.rnn.resolve_backend(batches[0][0]),
                             pad_multiple=pad_multiple, shapes=len({b[0].shape[0] for b in batches}),
                             ms_per_batch=ms / n_batches, utterances_per_s=utterances / (ms / 1e3),
                             peak_mib=peak))
            print(f"speech {norm:9s} pad {pad_multiple or '-':>4} {rows[-1]['utterances_per_s']:9.1f} utt/s "
                  f"({rows[-1]['shapes']} batch lengths)", flush=True)
        del model, opt
    return rows


def bench_directions(shape: Shape, device, warmup: int, reps: int) -> list[dict]:
    """A bidirectional stack's training step on the fused loop with its two directions in one
    recurrence (one launch per step serves both, ``joint_directions``) against one direction
    after the other, per variant at ``shape`` (the speech stack)."""
    timer, rows = Timer(device), []
    x = torch.randn(shape.T, shape.B, shape.I, device=device)
    for norm in VARIANTS:
        model = build_rnn(shape, norm, "fused", device).train()
        times = {}
        for joint in (False, True):
            model.joint_directions = joint
            times[joint], _ = timer(rnn_step(model, x, device, "fp32"), warmup, reps)
        rows.append(dict(shape=shape.name, T=shape.T, B=shape.B, I=shape.I, H=shape.H, L=shape.L,
                         norm=norm, apart_ms=times[False], joint_ms=times[True],
                         speedup=times[False] / times[True]))
        print(f"directions {shape.name:10s} {norm:12s} apart {times[False]:9.3f} ms  joint "
              f"{times[True]:9.3f} ms  x{rows[-1]['speedup']:5.2f}", flush=True)
        del model
    return rows


def directions_markdown(rows) -> list[str]:
    s = rows[0]
    lines = ["## Bidirectional: both directions in one launch per step", "",
             f"Training step (forward + backward) of the {s['shape']} stack (T={s['T']}, B={s['B']}, "
             f"input {s['I']}, hidden {s['H']}, {s['L']} bidirectional layers) on the fused loop: the two directions run as "
             f"one population of two (one launch per step for both, as cuDNN does) against one after "
             f"the other; fp32/TF32.", "",
             "| variant | one after the other ms | joint ms | speedup |", "|---|---:|---:|---:|"]
    lines += [f"| {r['norm']} | {r['apart_ms']:.3f} | {r['joint_ms']:.3f} | {r['speedup']:.2f} |" for r in rows]
    return [*lines, ""]


POPULATION_SIZES = (1, 4, 16, 52)  # 52: the appendix grid's trials per norm


def population_shapes() -> list[Shape]:
    """The appendix grid's recurrent stack (experiment=grid_char_rnn: 3 x tanh 250, T = 100) at
    its three batch sizes, and the PTB small and medium LSTM stacks."""
    c = experiment("grid_char_rnn")
    T, H, L = c["data"]["seq_len"], c["model"]["hidden_size"], c["model"]["num_layers"]
    grid = [Shape(f"grid B={B}", T, B, c["model"]["embedding_size"], H, L) for B in (32, 64, 128)]
    return grid + [shape_of("ptb_small"), shape_of("ptb_medium")]


def bench_population(shapes, sizes, device, warmup, reps) -> list[dict]:
    """Training-step throughput (forward + backward) of one population of M members against M
    ordinary layers stepped one after another, per shape, norm (baseline and the grid's /
    Table 2's BN) and M: tokens/s and the speedup. The grid rows are NormRNN (tanh), the PTB
    rows NormLSTM; both on the backend training picks (the fused loop on GPU)."""
    from bnrnn.nn import NormRNN

    timer, rows = Timer(device), []
    for shape in shapes:
        lstm = shape.name.startswith("ptb")
        cls, norms = (NormLSTM, ("none", "bn_recurrent")) if lstm else (NormRNN, ("none", "bn_sum"))
        for norm in norms:
            def build(population):
                return cls(shape.I, shape.H, num_layers=shape.L, norm=norm, max_steps=shape.T,
                           population=population).to(device).train()
            one = build(None)
            x1 = torch.randn(shape.T, shape.B, shape.I, device=device)
            single_ms, _ = timer(rnn_step(one, x1, device, "fp32"), warmup, reps)
            for M in sizes:
                pop = build(M)
                xm = torch.randn(shape.T, M, shape.B, shape.I, device=device)
                ms, peak = timer(rnn_step(pop, xm, device, "fp32"), warmup, reps)
                tokens = M * shape.T * shape.B
                rows.append(dict(shape=shape.name, norm=norm, M=M, backend=pop.resolve_backend(xm),
                                 population_ms=ms, separate_ms=M * single_ms,
                                 tokens_per_s=tokens / (ms / 1e3),
                                 separate_tokens_per_s=tokens / (M * single_ms / 1e3),
                                 speedup=M * single_ms / ms, peak_mib=peak))
                print(f"population {shape.name:12s} {norm:12s} M={M:3d} {ms:9.3f} ms  "
                      f"x{rows[-1]['speedup']:6.2f} vs {M} separate", flush=True)
                del pop
            del one
    return rows


def population_markdown(rows) -> list[str]:
    lines = ["## Populations: M models in one layer against M separate runs", "",
             "Training step (forward + backward) of one `population=M` layer against M ordinary "
             "layers of the same shape stepped one after another (M x the single layer's median "
             "step, measured in the same run); fp32/TF32; tokens = M x T x B.", "",
             "| shape | variant | backend | M | population ms | separate ms | tokens/s (population) "
             "| tokens/s (separate) | speedup |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['norm']} | {r['backend']} | {r['M']} | {r['population_ms']:.3f} | "
                     f"{r['separate_ms']:.3f} | {r['tokens_per_s']:.0f} | {r['separate_tokens_per_s']:.0f} | "
                     f"{r['speedup']:.2f} |")
    return [*lines, ""]


def markdown(rnn_rows, ptb_rows, meta, speech_rows=(), population_rows=(), direction_rows=()) -> str:
    lines = ["# Recurrent layer speed: every NormLSTM variant against cuDNN `nn.LSTM`", "",
             f"- Hardware: {meta['hardware']}", f"- Date: {meta['date']}",
             f"- Git revision: `{meta['git_revision']}`", f"- Command: `{meta['command']}`",
             f"- Method: one training step of the recurrent stack (forward + backward of a fixed input, "
             f"gradients reset), median of {meta['reps']} steps after {meta['warmup']} warm-up steps "
             f"({'CUDA events' if meta['device'] == 'cuda' else 'perf_counter'}); ratio = time / "
             f"eager `nn.LSTM` time at the same shape and precision in the same run; ratio to graphed = "
             f"time / that of `nn.LSTM`'s step captured once as a CUDA graph and replayed (GPU only; our "
             f"fused loops replay graphs too, so that is the like-for-like comparison). fp32 = float32 with "
             f"TF32 matmuls allowed on both sides; bf16 = `torch.autocast(bfloat16)` on both sides. "
             f"Peak memory is what the timed steps allocated above the model and input. Batch-normalized "
             f"variants in training mode (batch statistics); BN statistics frame-wise except the speech "
             f"stack (sequence-wise `bn_input`/`bn_recurrent` input term); inputs unpadded.", ""]
    if meta.get("rendered"):
        lines[-1:-1] = [f"- Rendered from the measurements in `{meta['rendered']}` by the current script "
                        f"(`python scripts/bench_rnn.py --from-json {meta['rendered']}`); nothing re-measured."]
    if meta["device"] == "cuda":
        lines += ["The fused path captures its step loops as CUDA graphs once a shape repeats (as in "
                  "these timings and in PTB training); variable-length batches (speech with bucketing) "
                  "replay a graph only for lengths seen before, else run the same kernels eagerly.", ""]
    if meta["device"] != "cuda":
        lines += ["**CPU run**: the normalized variants run the reference loop (the fused kernels need "
                  "a GPU); ratios are to PyTorch's own CPU `nn.LSTM`.", ""]
    for name in dict.fromkeys(r["shape"] for r in rnn_rows):
        s = shape_of(name)
        lines += [f"## {name}: T={s.T}, B={s.B}, input {s.I}, hidden {s.H}, {s.L} layers"
                  f"{', bidirectional' if s.bidirectional else ''}", "",
                  "| variant | backend | fp32 ms | fp32 ratio | fp32 ratio to graphed | fp32 peak MiB "
                  "| bf16 ms | bf16 ratio | bf16 ratio to graphed | bf16 peak MiB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, *_ in CANDIDATES:
            cells = {r["precision"]: r for r in rnn_rows if r["shape"] == name and r["variant"] == label}
            if not cells:
                continue
            backend = next(iter(cells.values()))["backend"]
            row = [label, backend]
            for prec in ("fp32", "bf16"):
                r = cells.get(prec)
                if r is None or "error" in r:
                    row += ["—"] * 4 if r is None else [f"capture failed: {r['error']}", "—", "—", "—"]
                    continue
                graphed = f"{r['ratio_graphed']:.2f}" if "ratio_graphed" in r else "—"
                row += [f"{r['ms']:.3f}", f"{r['ratio']:.2f}", graphed, _mib(r["peak_mib"])]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Targets: ratio of step time to cuDNN `nn.LSTM`", "",
              "| target | shape | precision | measured | met |", "|---|---|---|---:|---|"]
    for norm, limit in TARGETS.items():
        for r in rnn_rows:
            if r["shape"] == "ptb_medium" and r["norm"] == norm:
                lines.append(f"| {norm} ≤ {limit}× | ptb_medium | {r['precision']} | {r['ratio']:.2f} | "
                             f"{'yes' if r['ratio'] <= limit else 'no'} |")
    worst = max((r for r in rnn_rows if r["norm"]), key=lambda r: r["ratio"], default=None)
    if worst:
        lines.append(f"| every variant ≤ {ANY_SHAPE_LIMIT}× at every shape | worst: {worst['variant']}, "
                     f"{worst['shape']} | {worst['precision']} | {worst['ratio']:.2f} | "
                     f"{'yes' if worst['ratio'] <= ANY_SHAPE_LIMIT else 'no'} |")
    lines.append("")
    if ptb_rows:
        total = sum(r["protocol_hours"] for r in ptb_rows)
        sizes = dict.fromkeys(r["size"] for r in ptb_rows)
        epochs = " / ".join(str(experiment(s)["trainer"]["max_epochs"]) for s in sizes)
        eval_batch = " / ".join(dict.fromkeys(str(experiment(s)["data"]["eval_batch_size"]) for s in sizes))
        lines += ["## Full PTB training step (WordLM, fp32/TF32) and the Table 2 protocol", "",
                  f"Epoch time = training windows × train step + valid and test windows (batch {eval_batch}) × "
                  f"eval step; protocol = epochs × epoch time ({epochs} epochs), one run at a time.", "",
                  "| size | variant | backend | train step ms | tokens/s | eval step ms | peak MiB | epoch s | protocol h |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in ptb_rows:
            lines.append(f"| {r['size']} | {r['norm']} | {r['backend']} | {r['train_step_ms']:.3f} | "
                         f"{r['tokens_per_s']:.0f} | {r['eval_step_ms']:.3f} | {_mib(r['peak_mib'])} | "
                         f"{r['epoch_s']:.1f} | {r['protocol_hours']:.2f} |")
        expected = {(size, norm) for size in PTB_SIZES for norm in TABLE2_NORMS}
        missing = sorted(expected - {(r["size"], r["norm"]) for r in ptb_rows})
        verdict = ("met" if total < 2 else "not met") if not missing else (
            "not established by this benchmark: no full-step measurement of "
            + ", ".join(f"{size} {norm}" for size, norm in missing))
        lines += ["", f"Estimated wall time of the {len(ptb_rows)} runs measured here, one after another: "
                      f"**{total:.2f} h**; target for the full {len(expected)}-run table: under 2 h on one H100 ({verdict}).", ""]
    if population_rows:
        lines += population_markdown(population_rows)
    if direction_rows:
        lines += directions_markdown(direction_rows)
    if speech_rows:
        lines += ["## Speech training throughput (experiment=speech_librispeech, fp32/TF32)", "",
                  "One pass over the same bucketed batches of varied length (utterances of 200-1300 "
                  "frames), full training step; padded to each batch's longest utterance, or to a "
                  "multiple of `data.pad_multiple` (a fixed set of lengths: the fused loop replays a "
                  "CUDA graph per length it has seen twice).", "",
                  "| variant | backend | padding | batch lengths | ms per batch | utterances/s | peak MiB |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for r in speech_rows:
            padding = f"multiple of {r['pad_multiple']}" if r["pad_multiple"] else "longest utterance"
            lines.append(f"| {r['norm']} | {r['backend']} | {padding} | {r['shapes']} | "
                         f"{r['ms_per_batch']:.2f} | {r['utterances_per_s']:.1f} | {_mib(r['peak_mib'])} |")
        lines.append("")
    return "\n".join(lines)


def _mib(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.0f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--out", default="results/bench.md")
    ap.add_argument("--shapes", default="ptb_small,ptb_medium,ptb_large,speech,char_ptb")
    ap.add_argument("--precisions", default=None, help="fp32,bf16 (default: both on GPU, fp32 on CPU)")
    ap.add_argument("--ptb-sizes", default=None,
                    help="full WordLM steps for these sizes (default: the PTB shapes benchmarked)")
    ap.add_argument("--warmup", type=int, default=None, help="default 10 on GPU, 1 on CPU")
    ap.add_argument("--reps", type=int, default=None, help="default 50 on GPU, 5 on CPU")
    ap.add_argument("--speech-batches", type=int, default=None,
                    help="batches per timed pass of the speech training step (default 20 on GPU, 0 "
                         "= skip, on CPU)")
    ap.add_argument("--population-sizes", default=None,
                    help="population sizes M to time (default 1,4,16,52 on GPU, none on CPU; '' = skip)")
    ap.add_argument("--directions", default=None, choices=("yes", "no"),
                    help="time a bidirectional stack's directions jointly vs one after the other on "
                         "the fused loop, at the speech shape (default yes on GPU, no on CPU)")
    ap.add_argument("--from-json", default=None,
                    help="re-render the markdown of an earlier run's JSON (no measurement)")
    args = ap.parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        data["meta"]["rendered"] = args.from_json
        write_text(Path(args.out), markdown(data["rnn"], data["ptb"], data["meta"], data.get("speech", []),
                                            data.get("population", []), data.get("directions", [])))
        print(f"wrote {args.out}")
        return
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    warmup = args.warmup if args.warmup is not None else 10 if gpu else 1
    reps = args.reps if args.reps is not None else 50 if gpu else 5
    shapes = [shape_of(s) for s in args.shapes.split(",")]
    precisions = (args.precisions or ("fp32,bf16" if gpu else "fp32")).split(",")
    sizes = args.ptb_sizes.split(",") if args.ptb_sizes is not None else \
        [s.name for s in shapes if s.name in PTB_SIZES]
    sizes = [s for s in sizes if s]
    torch.manual_seed(0)
    rnn_rows = bench_rnn(shapes, precisions, device, warmup, reps)
    ptb_rows = bench_ptb(sizes, device, warmup, reps)
    n_speech = args.speech_batches if args.speech_batches is not None else 20 if gpu else 0
    speech_rows = bench_speech(device, 2, max(1, reps // 10), n_speech) if n_speech else []
    members = args.population_sizes if args.population_sizes is not None else \
        ",".join(map(str, POPULATION_SIZES)) if gpu else ""
    members = [int(m) for m in members.split(",") if m]
    population_rows = bench_population(population_shapes(), members, device, warmup, reps) if members else []
    directions = (args.directions or ("yes" if gpu else "no")) == "yes"
    direction_rows = bench_directions(shape_of("speech"), device, warmup, reps) if directions else []
    revision = git_revision()
    if revision == "unknown":  # a copy of the tree without .git (e.g. a lent GPU machine)
        revision = os.environ.get("BNRNN_GIT_REVISION", "unknown")
    meta = dict(hardware=hardware(device), device=device.type, git_revision=revision,
                date=datetime.date.today().isoformat(), warmup=warmup, reps=reps,
                command="python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]))
    out = Path(args.out)
    write_text(out, markdown(rnn_rows, ptb_rows, meta, speech_rows, population_rows, direction_rows))
    write_json(out.with_suffix(".json"), dict(meta=meta, rnn=rnn_rows, ptb=ptb_rows, speech=speech_rows,
                                              population=population_rows, directions=direction_rows))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
