"""Build (download, generate, extract features for) an experiment's data once, without training.

    python scripts/prepare_data.py experiment=speech_synthetic_paper [override ...]

The same overrides as ``python -m bnrnn.train`` select the data; the configuration is validated
first, and the data module is then built exactly as a run would build it, so its caches are
complete before any run starts. Useful before several runs share one corpus (a campaign's runs
start together and would otherwise all build it at once).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def main(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir

    from bnrnn.config import CONFIG_DIR, ConfigError, check_data_files, validate, validate_data

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=argv)
    from bnrnn.train import build_data

    start = time.perf_counter()
    try:
        check_data_files(validate(cfg))
        data = build_data(cfg.data)
        validate_data(cfg, data)
    except ConfigError as e:
        print(f"prepare_data: {e}", file=sys.stderr)
        return 2
    print(f"prepare_data: {cfg.data._target_} ready in {time.perf_counter() - start:.1f} s; "
          f"dims: {sorted(data.dims)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
