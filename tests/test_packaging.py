"""What a user gets from ``pip install .``: a wheel that holds the package and its Hydra configs
and works outside the clone, extras that are needed only where they are used, and the README's
stand-alone use of the layer."""
from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

# Run a child with the named modules unimportable, as on a machine without an extra.
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
import importlib.util
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    if name.split('.')[0] in {blocked!r}:
        return None
    return _find_spec(name, package)
importlib.util.find_spec = find_spec
"""


def child(code: str, *, blocked=(), cwd=REPO, env=None, flags=()) -> subprocess.CompletedProcess:
    prelude = BLOCK.format(blocked=set(blocked)) if blocked else ""
    return subprocess.run([sys.executable, *flags, "-c", prelude + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layers_and_trainer_need_no_speech_extra():
    speech = ("lhotse", "kaldi_native_fbank", "soundfile", "scipy", "datasets")
    ok = child("import bnrnn.nn, bnrnn.train, bnrnn.report\n"
               "from bnrnn.nn import NormLSTM\n"
               "import torch\n"
               "print(NormLSTM(3, 4, norm='bn_input')(torch.randn(5, 2, 3))[0].shape)", blocked=speech)
    assert ok.returncode == 0, ok.stderr
    assert "torch.Size([5, 2, 4])" in ok.stdout
    refused = child("import bnrnn.data.speech", blocked=("lhotse",))
    assert refused.returncode != 0
    assert "pip install 'bnrnn[speech]'" in refused.stderr and "lhotse" in refused.stderr


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- layer-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its layer example (the block after <!-- layer-example -->)"
    return match.group(1)


def test_readme_layer_example_runs():
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 12
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own code)
    assert scope["out"].shape == (50, 8, 64)
    assert scope["h"].shape == scope["c"].shape == (2, 8, 64)
    assert all(p.grad is not None for p in scope["lstm"].parameters() if p.requires_grad)


@pytest.mark.slow
def test_wheel_holds_package_and_configs_and_works_outside_the_clone(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("bnrnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO)) for p in (REPO / "bnrnn").rglob("*.py")}
    configs = {"bnrnn/" + str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")}
    assert sources <= names, sorted(sources - names)
    assert configs <= names, sorted(configs - names)
    assert not any(n.startswith(("tests/", "results/", "scripts/")) for n in names)

    # Install into a folder and import it with no site hooks, so the clone's editable install
    # cannot answer instead; torch and Hydra come from this interpreter's site-packages.
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    paths = [str(target)] + [p for p in site.getsitepackages() + [site.getusersitepackages()]
                             if Path(p).is_dir() and p not in sys.path[:1]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    code = ("import bnrnn, bnrnn.config, bnrnn.train\n"
            "from hydra import compose, initialize_config_dir\n"
            "from hydra.utils import instantiate\n"
            "assert bnrnn.__file__.startswith({t!r}), bnrnn.__file__\n"
            "assert str(bnrnn.config.CONFIG_DIR) == {c!r}, bnrnn.config.CONFIG_DIR\n"
            "with initialize_config_dir(config_dir=bnrnn.train.CONFIG_DIR, version_base='1.3'):\n"
            "    cfg = compose('config', overrides=['experiment=ptb_small', 'protocol=laurent_code'])\n"
            "model = instantiate(cfg.model, vocab_size=50)\n"
            "print(type(model).__name__, cfg.trainer.clip_grad_norm)\n"
            ).format(t=str(target), c=str(target / "bnrnn" / "configs"))
    run = child(code, cwd=tmp_path, env=env, flags=("-S",))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == "WordLM"


def test_configs_are_found_in_a_clone():
    from bnrnn.config import CONFIG_DIR

    assert CONFIG_DIR == REPO / "configs"
