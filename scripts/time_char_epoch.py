"""Time training steps of Cooijmans et al.'s char-PTB model at its real shape and project an epoch.

    PYTHONPATH=$PWD python scripts/time_char_epoch.py --root .devdata/ptb_char --steps 200

One step = forward, backward, gradient-norm clip at 1.0 and an Adam update of the one-hot ->
LSTM 1000 -> softmax 50 model on a real (T=100, B=64) batch of the training split, exactly as
``bnrnn.engine.Trainer`` runs it. The first ``--warmup`` steps are not timed. The epoch
projection is the median step time times the number of training batches of the full split
(``PTBCharData.num_batches('train')``); evaluation passes are not included. Prints one JSON line
per variant.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from bnrnn.data.ptb_char import PTBCharData
from bnrnn.io import hardware
from bnrnn.models.char import CharLSTM


def time_variant(data: PTBCharData, norm: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = CharLSTM(data.dims["vocab_size"], hidden_size=1000, norm=norm,
                     norm_options={"max_steps": data.seq_len, "forget_bias": 1.0, "momentum": 0.05})
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    times = []
    batches = data.batches("train", 1)
    for i in range(warmup + steps):
        batch = next(batches)
        start = time.perf_counter()
        out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out.objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    n = data.num_batches("train")
    return {"norm": norm, "backend": model.rnn.resolve_backend(batch[0].float().unsqueeze(-1)),
            "steps_timed": steps, "median_step_s": median, "mean_step_s": statistics.fmean(times),
            "batches_per_epoch": n, "projected_epoch_s": median * n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="folder with ptb.char.{train,valid,test}.txt")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--norms", nargs="+", default=["none", "bn_recurrent"])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = PTBCharData(root=args.root, download=False, seq_len=100, batch_size=64)
    info = {"hardware": hardware(torch.device("cpu")), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(json.dumps(info), flush=True)
    for norm in args.norms:
        print(json.dumps(time_variant(data, norm, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
