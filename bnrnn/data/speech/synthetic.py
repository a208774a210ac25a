"""An offline framewise-alignment corpus: PTB sentences spoken by libespeak-ng.

The stand-in for LibriSpeech + CPC labels where nothing can be downloaded (``docs/reference.md`` §5).
Train, dev and test sentences come from the PTB train, valid and test text (so no sentence
is shared between splits); each utterance gets a voice, a variant, a rate and a pitch drawn
from a generator seeded by ``(seed, split)``. eSpeak's phoneme events give the exact phoneme
of every 10 ms Kaldi frame; the classes are :data:`~bnrnn.data.speech.espeak.PHONEME_CLASSES`
(silence + the eSpeak English phoneme inventory).

The corpus is generated on first use into ``cache_dir/synthetic-<key>/`` (key: a hash of the
configuration, the PTB files' checksums, the libespeak-ng version and the feature options),
one shard per fresh worker process, and is byte-identical for the same configuration.
The plan (text, voice, rate, pitch of every utterance) is recorded in the manifest.

Text normalisation: PTB's ``<unk>`` tokens are dropped, its ``N`` (a number) becomes a number
drawn from the same generator, and clitics (``'s``, ``n't``) are joined to their word.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bnrnn.data.download import fetch, md5sum
from bnrnn.data.ptb import PTB_FILES
from bnrnn.data.speech import espeak
from bnrnn.data.speech.batching import SpeechData
from bnrnn.data.speech.features import FEATURE_CONFIG, SAMPLE_RATE, fbank, num_frames
from bnrnn.data.speech.shards import ShardJob, build, cache_key, load_splits

log = logging.getLogger("bnrnn")

TEXT_SPLITS = {"train": "train", "dev": "valid", "test": "test"}  # speech split -> PTB split


def normalize(tokens: list[str], rng: np.random.Generator) -> str:
    """PTB tokens -> text for eSpeak (see the module docstring)."""
    words: list[str] = []
    for tok in tokens:
        if tok == "<unk>":
            continue
        if tok == "N":
            tok = str(int(rng.integers(0, 10 ** int(rng.integers(1, 5)))))
        if words and (tok.startswith("'") or tok == "n't"):
            words[-1] += tok
        else:
            words.append(tok)
    return " ".join(words)


def make_plan(lines: list[str], count: int, rng: np.random.Generator, *, min_words: int,
              voices: list[str], variants: list[str], rate: tuple[int, int],
              pitch: tuple[int, int], pitch_range: tuple[int, int], prefix: str) -> list[dict]:
    """``count`` utterances: sentences drawn without replacement (with replacement only if the
    text has fewer sentences) and a random voice for each."""
    candidates = [i for i, line in enumerate(lines) if len(line.split()) >= min_words]
    if not candidates:
        raise ValueError(f"synthetic speech: no sentence of {prefix} has {min_words}+ words")
    picks = rng.choice(len(candidates), size=count, replace=count > len(candidates))
    plan = []
    for k, p in enumerate(picks):
        line = candidates[int(p)]
        plan.append({
            "id": f"{prefix}-{k:06d}",
            "line": line,
            "text": normalize(lines[line].split(), rng),
            "voice": str(voices[int(rng.integers(len(voices)))]),
            "variant": str(variants[int(rng.integers(len(variants)))]),
            "rate": int(rng.integers(rate[0], rate[1] + 1)),
            "pitch": int(rng.integers(pitch[0], pitch[1] + 1)),
            "pitch_range": int(rng.integers(pitch_range[0], pitch_range[1] + 1)),
        })
    return plan


def synthesize_shard(job: tuple[str, list[dict]], out_path: str) -> dict:
    """Worker (one fresh process per shard): with the libespeak-ng that ``job = (library,
    plan)`` names, speak every utterance of ``plan``, compute its features and frame labels,
    write the shard. Returns the manifest entry."""
    from bnrnn.data.speech.shards import write_shard

    library, plan = job
    tts = espeak.ESpeak(library)
    ids, feats, labels, seconds = [], [], [], 0.0
    for utt in plan:
        tts.set_voice(utt["voice"], utt["variant"], utt["rate"], utt["pitch"], utt["pitch_range"])
        wav, segments = tts.synth(utt["text"])
        wav16 = espeak.resample_to_16k(wav, tts.sample_rate)
        x = fbank(wav16, SAMPLE_RATE)
        y = espeak.frame_labels(segments, len(wav16))
        assert len(x) == len(y) == num_frames(len(wav16)), (utt["id"], len(x), len(y))
        ids.append(utt["id"])
        feats.append(x)
        labels.append(y)
        seconds += len(wav16) / SAMPLE_RATE
    entry = write_shard(out_path, ids, feats, labels)
    return entry | {"seconds": round(seconds, 3)}


class SyntheticSpeechData(SpeechData):
    """The eSpeak corpus for the trainer (batches as in :class:`SpeechData`).

    Args:
        root: directory with PTB's ``ptb.{train,valid,test}.txt`` (a local copy, or a subset
            with its ``SUBSET.md5``, see :mod:`bnrnn.data.download`); None downloads them into
            ``text_cache_dir`` (MD5-checked, ``bnrnn.data.ptb``).
        cache_dir: where the generated corpus goes (``data.cache_dir``).
        utterances: utterances per split, e.g. ``{"train": 2000, "dev": 200, "test": 200}``.
        shard_size: utterances per shard (one worker process each).
        workers: parallel worker processes while generating; None: one per available core.
        library: which libespeak-ng speaks (``espeak.LIBRARIES``): ``bundled`` (the pinned
            espeakng-loader wheel), ``system``, or ``auto`` (the wheel where installed).
        seed: seeds the plan (sentences, voices, rates, pitches) — and with it the corpus.
        voices, variants: eSpeak voices and variants to draw from (default: all of
            :data:`~bnrnn.data.speech.espeak.VOICES` and ``VARIANTS``).
        rate: (min, max) words per minute; pitch, pitch_range: (min, max) in 0-100.
        min_words: sentences with fewer words are not used.
        download: allow downloading PTB when ``root`` is None.
        batch_size, eval_batch_size, max_frames, sort_pool, limit_batches, pad_multiple, batch_seed: see
            :class:`SpeechData` (``batch_seed`` seeds the bucketing shuffle).
        progress: progress bar while generating.
    """

    @classmethod
    def local_files(cls, data: Mapping) -> tuple[list[str], str]:
        """The files a configuration ``data`` reads from its ``root`` (PTB's text; without one, from the
        cache it names second), for ``bnrnn.config.check_data_files`` before any work."""
        splits = data.get("utterances") or TEXT_SPLITS
        return [PTB_FILES[TEXT_SPLITS[s]].name for s in splits if s in TEXT_SPLITS], "text_cache_dir"

    def __init__(self, root: str | None = None, cache_dir: str = "~/.cache/bnrnn/synthetic_speech",
                 text_cache_dir: str = "~/.cache/bnrnn/ptb",
                 utterances: dict[str, int] | None = None, shard_size: int = 100, workers: int | None = 1,
                 library: str = "auto",
                 seed: int = 0, voices: list[str] | None = None, variants: list[str] | None = None,
                 rate: tuple[int, int] = (130, 210), pitch: tuple[int, int] = (30, 70),
                 pitch_range: tuple[int, int] = (30, 70), min_words: int = 3, download: bool = True,
                 batch_size: int = 24, eval_batch_size: int = 24, max_frames: int | None = 1300,
                 sort_pool: int = 50, limit_batches: int | None = None, pad_multiple: int | None = None,
                 batch_seed: int = 0,
                 progress: bool = True):
        utterances = dict(utterances or {"train": 2000, "dev": 200, "test": 200})
        unknown = set(utterances) - set(TEXT_SPLITS)
        if unknown:
            raise ValueError(f"SyntheticSpeechData: unknown split(s) {sorted(unknown)} in "
                             f"utterances; allowed: {sorted(TEXT_SPLITS)}")
        voices = list(voices or espeak.VOICES)
        variants = list(espeak.VARIANTS if variants is None else variants)
        for lo_hi, name in ((rate, "rate"), (pitch, "pitch"), (pitch_range, "pitch_range")):
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"SyntheticSpeechData: {name} must be [min, max]; got {list(lo_hi)}")
        _, found = espeak.load_library(library)  # fail early, with the install hint, if it is missing
        if workers is None:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

        texts = {}
        for split in utterances:
            file = PTB_FILES[TEXT_SPLITS[split]]
            path = fetch(file, root=root, cache_dir=text_cache_dir, download_ok=download)
            # the file's own MD5 (= file.md5 for the canonical text, another for a subset) keys the cache
            texts[split] = (md5sum(path), path.read_text(encoding="utf-8").splitlines())

        config = {
            "corpus": "synthetic_speech",
            "utterances": utterances,
            "shard_size": shard_size,
            "seed": seed,
            "voices": voices,
            "variants": variants,
            "rate": list(rate),
            "pitch": list(pitch),
            "pitch_range": list(pitch_range),
            "min_words": min_words,
            "text_md5": {s: md5 for s, (md5, _) in texts.items()},
            "espeak": espeak.library_version(library),
            "classes": list(espeak.PHONEME_CLASSES),
            "features": FEATURE_CONFIG,
        }
        jobs, plans = [], {}
        for split in sorted(utterances):
            rng = np.random.default_rng([seed, list(TEXT_SPLITS).index(split)])
            plans[split] = make_plan(texts[split][1], utterances[split], rng, min_words=min_words,
                                     voices=voices, variants=variants, rate=tuple(rate),
                                     pitch=tuple(pitch), pitch_range=tuple(pitch_range),
                                     prefix=split)
            for i in range(0, len(plans[split]), shard_size):
                jobs.append(ShardJob(split, i // shard_size, (library, plans[split][i:i + shard_size])))
        self.directory = Path(cache_dir).expanduser() / f"synthetic-{cache_key(config)}"
        self.manifest = build(self.directory, config, jobs, synthesize_shard, workers=workers,
                              desc=f"synthesizing speech into {self.directory}",
                              extra={"plan": plans}, progress=progress)
        hours = sum(s.get("seconds", 0) for s in self.manifest["shards"]) / 3600
        log.info("synthetic speech corpus %s: %.2f h of audio, libespeak-ng %s (%s)", self.directory,
                 hours, config["espeak"], found.source)
        super().__init__(load_splits(self.directory, self.manifest),
                         num_classes=len(espeak.PHONEME_CLASSES), batch_size=batch_size,
                         eval_batch_size=eval_batch_size, max_frames=max_frames, seed=batch_seed,
                         sort_pool=sort_pool, limit_batches=limit_batches,
                         pad_multiple=pad_multiple)
