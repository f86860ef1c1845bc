"""Model cards for exports: what the base model says about itself, and a README.md for the hub.

`describe_source(model.source)` reads the base model's own metadata for the hub id it has (or
derives from), its license and language, and what PEFT can load an adapter onto:

- a hub id: itself;
- an HF directory: a hub cache snapshot's repo (`models--org--name/snapshots/...`), else the
  repo its README's usage snippet loads (`SentenceTransformer('org/name')`, as sentence-transformers
  READMEs have), else config.json's `_name_or_path` when that is a hub id (often the model this one
  was trained from); license and language from the README's YAML header. PEFT loads the directory;
- a .gguf file: the repo in `general.source.repo_url` / `general.repo_url` (the weights it was
  converted from, which PEFT can load), else `general.base_model.0.repo_url` (what those were
  trained from: a card's `base_model`, not the same weights); `general.license`,
  `general.languages`. Without a repo, PEFT has no base to load by name: the card says to load
  the GGUF with transformers' `gguf_file=` and attach the adapter with `PeftModel`.

`model_card` writes the YAML header huggingface_hub's `ModelCard` reads (base_model, library_name,
pipeline_tag, license, language, datasets, tags, model-index with the test metrics), a usage
snippet, and the run's data and config with every local path cut to its last component: a card
is published, and machine paths mean nothing (or too much) to its readers.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from etils import epath

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,95}")
_HUB_URL = re.compile(r"https?://(?:www\.)?huggingface\.co/(?!datasets/|spaces/)([\w.-]+/[\w.-]+)")
_README_ID = re.compile(r"""(?:SentenceTransformer|from_pretrained)\(\s*["']([\w.-]+/[\w.-]+)["']""")
_CACHE_SNAPSHOT = re.compile(r"models--([\w.-]+?)--([\w.-]+)$")
# Hub data sets of jaxtune's builtins (the same texts: Pang & Lee's sentence polarity data).
BUILTIN_DATASETS = {"rotten_tomatoes": ("cornell-movie-review-data/rotten_tomatoes", "en"),
                    "chitchat": (None, "en")}
_DATA_FILES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # 'hub' | 'dir' | 'gguf' | 'preset'
  name: str  # for people: the hub id, else the GGUF's general.name, else the file or folder name
  hub_id: str | None = None  # a card's base_model: these weights' repo, or the one they came from
  peft_base: str | None = None  # adapter_config base_model_name_or_path: a hub id or HF directory
  license: str | None = None
  language: tuple[str, ...] = ()
  gguf_file: str | None = None  # a GGUF base's file name (transformers' gguf_file=)


def is_hub_id(text: str) -> bool:
  return bool(_HUB_ID.fullmatch(text)) and not text.endswith(".gguf") and ".." not in text


def describe_source(source: str) -> Source:
  """What `source` (a run's model.source) says about itself; see the module docstring."""
  if source.startswith("preset:"):
    return Source("preset", source)
  path = Path(source).expanduser()
  if path.suffix == ".gguf" and path.is_file():
    return _gguf_source(path)
  if path.is_dir():
    return _dir_source(path)
  if is_hub_id(source):
    return Source("hub", source, hub_id=source, peft_base=source)
  return Source("dir", path.name)


def _gguf_source(path: Path) -> Source:
  from jaxtune.hf import gguf

  meta = gguf.metadata(path)
  own = next((m.group(1) for k in ("general.source.repo_url", "general.repo_url",
                                   "general.source.url", "general.url")
              if (m := _HUB_URL.match(str(meta.get(k, ""))))), None)
  parent = next((m.group(1) for i in range(int(meta.get("general.base_model.count", 0) or 0))
                 if (m := _HUB_URL.match(str(meta.get(f"general.base_model.{i}.repo_url", ""))))),
                None)
  languages = meta.get("general.languages") or meta.get("general.language") or ()
  return Source("gguf", str(meta.get("general.name") or path.name), hub_id=own or parent,
                peft_base=own, license=_text(meta.get("general.license")),
                language=_strings(languages), gguf_file=path.name)


def _dir_source(path: Path) -> Source:
  hub_id = None
  resolved = path.resolve()
  for part in (resolved, *resolved.parents):  # hub cache: .../models--org--name/snapshots/<sha>
    if m := _CACHE_SNAPSHOT.search(part.name):
      hub_id = f"{m.group(1)}/{m.group(2)}"
      break
  header: dict = {}
  readme = path / "README.md"
  if readme.is_file():
    from huggingface_hub import ModelCard

    text = readme.read_text(errors="replace")
    try:
      header = ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # noqa: BLE001 - a malformed header only costs the license and language
      header = {}
    if hub_id is None and (m := _README_ID.search(text)):
      hub_id = m.group(1)
  if hub_id is None:
    try:
      name = json.loads((path / "config.json").read_text()).get("_name_or_path") or ""
    except (OSError, ValueError, AttributeError):
      name = ""
    if is_hub_id(name) and not Path(name).expanduser().exists():
      hub_id = name
  return Source("dir", hub_id or path.name, hub_id=hub_id, peft_base=str(resolved),
                license=_text(header.get("license")), language=_strings(header.get("language")))


def _text(value) -> str | None:
  return str(value) if isinstance(value, str) and value else None


def _strings(value) -> tuple[str, ...]:
  if isinstance(value, str):
    return (value,)
  return tuple(str(v) for v in value or () if v)


def dataset_id(source: str) -> str | None:
  """The hub data set behind a data.source: a builtin's, or a hub name ('name[:split]')."""
  if not source:
    return None
  if source in BUILTIN_DATASETS:
    return BUILTIN_DATASETS[source][0]
  name = source.split(":")[0]
  if (Path(source).expanduser().exists() or "://" in source or source.startswith(("/", "~", "."))
      or Path(name).suffix in _DATA_FILES):  # a local file, perhaps read on another machine
    return None
  return name if is_hub_id(name) or re.fullmatch(r"[\w.-]+", name) else None


def scrub(value):
  """`value` (a config tree) with local paths and URIs cut to their last component."""
  if isinstance(value, dict):
    return {k: scrub(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [scrub(v) for v in value]
  if isinstance(value, str) and _is_path(value):
    return _last(value)
  return value


def _is_path(text: str) -> bool:
  if not text or "\n" in text or is_hub_id(text) or text.startswith("preset:"):
    return False
  return (text.startswith(("/", "~", "./", "../")) or "://" in text or "\\" in text
          or ("/" in text and Path(text).exists()))


def _last(text: str) -> str:
  return re.split(r"[/\\]", text.rstrip("/\\"))[-1] or "."


def model_card(config, workdir, *, adapter: bool, source: Source | None = None,
               chat: bool = False) -> str:
  """README.md for an export of the run `config` (results.json and run.json from `workdir`).

  `source`: `describe_source(config.model.source)` unless given; `chat`: the tokenizer has a
  chat template (the usage snippet applies it).
  """
  from huggingface_hub import EvalResult, ModelCardData

  import jaxtune
  from jaxtune import objectives

  source = source or describe_source(config.model.source)
  workdir = epath.Path(workdir) if workdir else None
  results = _read_json(workdir / "results.json") if workdir else None
  run = (_read_json(workdir / "run.json") if workdir else None) or {}
  task = config.model.task
  objective = objectives.get(config)
  pipeline_tag = objective.pipeline_tag
  d = config.data
  data_sources = [s for s in (d.source, d.validation_source, d.test_source) if s]
  datasets = list(dict.fromkeys(i for s in data_sources if (i := dataset_id(s))))
  language = list(source.language) or sorted(
    {BUILTIN_DATASETS[s][1] for s in data_sources if s in BUILTIN_DATASETS})
  # A mean-pooling classifier exports as a sentence-transformers directory (`jaxtune.hf.sbert`).
  sbert = objective.head == "seq_cls" and config.model.pooling == "mean" and not adapter
  library = "peft" if adapter else "sentence-transformers" if sbert else "transformers"
  tags = ["jaxtune", *(["lora"] if config.lora.rank > 0 else []), *(["peft"] if adapter else []),
          *([pipeline_tag] if pipeline_tag else []), *(["gguf-base"] if source.gguf_file else [])]

  eval_results = None
  split, metrics = next(((s, results[s]) for s in ("test", "val") if results and results.get(s)),
                        (None, {}))
  numbers = {k: float(v) for k, v in metrics.items()  # scores, not the split's example count
             if isinstance(v, int | float) and not isinstance(v, bool) and k != "examples"}
  if numbers and pipeline_tag:
    data_name = _last(data_sources[0]) if data_sources else d.kind
    eval_results = [EvalResult(
      task_type=pipeline_tag, dataset_type=(datasets or [data_name])[0], dataset_name=data_name,
      dataset_split="test" if split == "test" else "validation", metric_type=k, metric_value=v,
      metric_name=f"{'test' if split == 'test' else 'validation'} {k}")
      for k, v in numbers.items()]
  name = _last(str(workdir)) if workdir else "jaxtune-model"
  data = ModelCardData(
    base_model=source.hub_id, library_name=library, pipeline_tag=pipeline_tag,
    license=source.license, language=language or None, datasets=datasets or None, tags=tags,
    model_name=name if eval_results else None, eval_results=eval_results)

  stats = run.get("extra", {}).get("data_stats") or {}
  how = (f"{task}{f', LoRA rank {config.lora.rank}' if config.lora.rank else ''}"
         f"{', adapter only' if adapter else ', weights merged' if config.lora.rank else ''}")
  lines = [f"# {name}", "",
           f"Fine-tuned with jaxtune {jaxtune.__version__} ({how}).", "",
           "## Base model", "", _base_text(source), "",
           "## Usage", "", *_usage(config, source, adapter=adapter, sbert=sbert, chat=chat), "",
           "## Data", "", f"- kind: `{d.kind}`"]
  for label, s in (("source", d.source), ("validation", d.validation_source),
                   ("test", d.test_source)):
    if s:
      lines.append(f"- {label}: `{_last(s) if _is_path(s) else s}`")
  if d.kind != "sft" or objective.fixed_length:
    lines.append(f"- sequence length: {d.seq_len} tokens (longer texts are truncated)")
  for key in ("rows_read", "skipped", "truncated", "loss_tokens"):
    if key in stats:
      lines.append(f"- {key.replace('_', ' ')}: {stats[key]}")
  lines += ["", "## Final metrics", ""]
  if results:
    lines += [f"Best checkpoint: step {results.get('best_step')}.", "",
              "| split | metric | value |", "|---|---|---|"]
    for s in ("val", "test"):
      for k, v in (results.get(s) or {}).items():
        if isinstance(v, int | float):
          lines.append(f"| {s} | {k} | {v:.6g} |")
  else:
    lines.append("No results.json (the run did not finish).")
  cfg = scrub(json.loads(config.to_json_best_effort()))
  lines += ["", "## Training config", "",
            "Local paths are shortened to their last component.", "", "```json",
            json.dumps(cfg, indent=2, sort_keys=True), "```", ""]
  return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def _base_text(source: Source) -> str:
  if source.kind == "preset":
    return f"`{source.name}`: jaxtune's preset architecture, randomly initialised."
  if source.gguf_file:
    parts = [f"GGUF file `{source.gguf_file}` ({source.name})"]
    if source.hub_id:
      parts.append(f"from [{source.hub_id}](https://huggingface.co/{source.hub_id})")
    return " ".join(parts) + "; jaxtune trained on its dequantized weights."
  if source.hub_id:
    return f"[{source.hub_id}](https://huggingface.co/{source.hub_id})"
  return f"`{source.name}` (a local model directory; no hub id in its metadata)."


def _usage(config, source: Source, *, adapter: bool, sbert: bool, chat: bool) -> list[str]:
  from jaxtune import objectives

  here = '"path/to/this/folder"'  # this export, or its hub id once uploaded
  objective = objectives.get(config)
  if not adapter:
    return objective.usage(config, here, sbert=sbert, chat=chat)
  auto = objective.auto_classes
  if source.gguf_file:
    lines = [
      "The base is a GGUF file: transformers loads it with `gguf_file=` (dequantized, as jaxtune "
      "trained on it) and PEFT attaches the adapter.", "",
      "```python", f"from transformers import {auto[0]}", "from peft import PeftModel", "",
      f'base = {auto[0]}.from_pretrained("path/to/folder/of/the/gguf", '
      f'gguf_file="{source.gguf_file}")',
      f"model = PeftModel.from_pretrained(base, {here})"]
    if source.peft_base:
      lines += [f"# or on the original weights ({source.peft_base}, named in adapter_config.json):",
                f"# from peft import {auto[1]}; model = {auto[1]}.from_pretrained({here})"]
    return [*lines, "```"]
  base = source.hub_id or "path/to/the/base/model"
  return [
    "`adapter_config.json` names the base model by "
    + ("hub id" if source.kind == "hub" else
       "the directory it was trained from; on another machine load the base yourself"), "",
    "```python", f"from peft import {auto[1]}, PeftModel", f"from transformers import {auto[0]}", "",
    f"model = {auto[1]}.from_pretrained({here})",
    "# or, with the base model from elsewhere:",
    f'base = {auto[0]}.from_pretrained("{base}")',
    f"model = PeftModel.from_pretrained(base, {here})", "```"]


def _read_json(path: epath.Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None
