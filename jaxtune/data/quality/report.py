"""audit.json as people read it: audit.md, and audit.html with the plots embedded (base64 PNG).

The HTML page is self-contained (no scripts, styles or images from elsewhere), so it can be
mailed or attached to an issue. Both pages carry the same tables; the HTML adds the plots.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

ENCODING_NAMES = {"mojibake": "mojibake", "control_chars": "control characters", "html": "HTML remnants",
                  "urls": "URLs", "other_language": "other language"}


def _where(w: dict) -> str:
  return f"{Path(w['file']).name}:{w['row']}"


def sections(a: dict) -> list[tuple[str, list[str]]]:
  """(title, Markdown lines) per section; shared by both renderings."""
  out = []
  s = a["settings"]
  head = [f"- source: `{a['source']}`; columns: text `{a['columns']['text']}`"
          + (f", pair `{a['columns']['text_pair']}`" if a["columns"]["text_pair"] else "")
          + (f", label `{a['columns']['label']}`" if a["columns"]["label"] else ""),
          f"- tokenizer: `{a['tokenizer'] or 'none (lengths in words)'}`; seq_len {s['seq_len'] or '-'}; "
          f"near-duplicate Jaccard >= {s['near_threshold']} ({s['num_perm']} hashes, {s['ngram']}-grams); "
          f"language check: {s['lang'] or 'off'}",
          f"- unreadable rows (before splitting): {a['unreadable']['count']}"]
  head += [f"  - {_where(r)}: {r['reason']}" for r in a["unreadable"]["rows"][:20]]
  out.append(("Overview", head))
  table = ["| split | rows | valid | invalid | exact dup | near dup | also in train | "
           "truncated | imbalance | " + " | ".join(ENCODING_NAMES.values()) + " |",
           "|" + "---|" * (9 + len(ENCODING_NAMES))]
  for name, sp in a["splits"].items():
    lk = sp.get("leaks")
    enc = [str(sp["encoding"][k]["count"]) if k in sp["encoding"] else "-" for k in ENCODING_NAMES]
    trunc = sp["lengths"].get("truncated")
    leaked = "-" if not lk else "{} ({:.1%})".format(lk["rows"], lk["share"])
    cut = "-" if trunc is None else "{} ({:.1%})".format(trunc, sp["lengths"]["truncated_share"])
    table.append(
      f"| {name} | {sp['rows']} | {sp['valid']} | {sp['invalid']['count']} | {sp['duplicates']['exact']} | "
      f"{sp['duplicates']['near']} | {leaked} | {cut} | "
      f"{sp['labels'].get('imbalance_ratio', '-')} | " + " | ".join(enc) + " |")
  if "leaked_rows" in a["splits"].get("train", {}):
    table.append(f"\nTrain rows that also occur in validation/test (a clean drops them): "
                 f"{a['splits']['train']['leaked_rows']['count']}")
  out.append(("Summary", table))
  for name, sp in a["splits"].items():
    lines = []
    le = sp["lengths"]
    if "p50" in le:
      lines.append(f"- length ({le['unit']}): min {le['min']}, median {le['p50']}, p90 {le['p90']}, "
                   f"p99 {le['p99']}, max {le['max']}, mean {le['mean']}")
    if sp["invalid"]["count"]:
      lines.append(f"- invalid rows: {sp['invalid']['count']} ({sp['invalid']['by_reason']})")
      lines += [f"  - {_where(r)}: {r['reason']}" for r in sp["invalid"]["rows"][:20]]
    lab = sp["labels"]
    if lab:
      lines.append(f"- labels: {lab['counts']} (imbalance ratio {lab['imbalance_ratio']})")
      if sp.get("label_variants"):
        lines.append(f"- labels written several ways: {sp['label_variants']}")
      for label, toks in lab["predictive_tokens"].items():
        if toks:
          shown = ", ".join(f"`{t['token']}` ({t['rows']} rows, {t['p_label']:.0%})" for t in toks)
          lines.append(f"- tokens most predictive of `{label}` (prior {lab['label_prior'][label]:.0%}): {shown}")
    for pair in sp["duplicates"]["examples"]:
      lines.append(f"- {pair['kind']} duplicate (Jaccard {pair['jaccard']}): {_where(pair['row'])} "
                   f"`{pair['text']}` ~ {_where(pair['of_row'])} `{pair['of_text']}`"
                   + (f" labels {pair['labels']}" if "labels" in pair else ""))
    if sp["duplicates"]["conflicting_labels"]:
      lines.append(f"- duplicates whose label differs from the first copy: {sp['duplicates']['conflicting_labels']}")
    for pair in sp.get("leaks", {}).get("examples", []):
      lines.append(f"- leaked ({pair['kind']}, Jaccard {pair['jaccard']}): {_where(pair['row'])} "
                   f"`{pair['text']}` ~ train {_where(pair['of_row'])}")
    for key, title in ENCODING_NAMES.items():
      e = sp["encoding"].get(key)
      if e and e["count"]:
        extra = f" {e['languages']}" if "languages" in e else ""
        lines.append(f"- {title}: {e['count']}{extra}; e.g. " +
                     "; ".join(f"{_where(x)} `{x['text']}`" for x in e["examples"]))
    out.append((f"Split: {name}", lines))
  le = a.get("label_errors")
  if le:
    names = list(le["noise_matrix"])
    lines = [f"- {le['flagged']} of {le['rows']} {le['split']} rows flagged ({le['share']:.1%}) by "
             f"confident learning on {le['folds']}-fold out-of-fold probabilities (logistic "
             f"regression on {le['encoder']} embeddings, accuracy {le['oof_accuracy']:.3f}); "
             f"by given label: {le['flagged_by_given_label']}",
             "- estimated noise matrix, P(given | true): "
             + "; ".join(f"true `{t}`: " + ", ".join(f"{g} {le['noise_matrix'][g][t]:.2f}" for g in names)
                         for t in names)]
    lines += [f"- {_where(r)} given `{r['given']}`, suggested `{r['suggested']}` "
              f"({r['confidence']:.2f}): `{r['text'][:160]}`" for r in le["examples"]]
    out.append(("Label errors", lines))
  return out


def markdown(a: dict) -> str:
  parts = ["# Data audit", ""]
  for title, lines in sections(a):
    parts += [f"## {title}", "", *lines, ""]
  return "\n".join(parts)


def _png(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
  return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(a: dict) -> list[tuple[str, str]]:
  """(caption, base64 PNG): token-length histograms and label counts per split."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out = []
  fig, ax = plt.subplots(figsize=(7, 3.2))
  seq_len = a["settings"]["seq_len"]
  for name, sp in a["splits"].items():
    h = sp["lengths"].get("histogram")
    if h:
      ax.stairs([c / max(1, sum(h["counts"])) for c in h["counts"]], h["edges"], label=name)
  if seq_len:
    ax.axvline(seq_len, color="k", linestyle="--", label=f"seq_len {seq_len}")
  unit = next(iter(a["splits"].values()))["lengths"]["unit"] if a["splits"] else "tokens"
  ax.set(xlabel=f"length ({unit})", ylabel="share of rows")
  ax.legend()
  out.append(("Length distribution per split", _png(fig)))
  plt.close(fig)
  labelled = {n: sp["labels"]["counts"] for n, sp in a["splits"].items() if sp["labels"]}
  if labelled:
    fig, axes = plt.subplots(1, len(labelled), figsize=(3.2 * len(labelled), 3), squeeze=False)
    for ax, (name, counts) in zip(axes[0], labelled.items()):
      ax.bar(list(counts), list(counts.values()))
      ax.set_title(name)
      ax.tick_params(axis="x", rotation=45)
    out.append(("Label counts per split", _png(fig)))
    plt.close(fig)
  return out


def _md_inline(text: str) -> str:
  """Markdown `code` spans -> <code>, everything else escaped."""
  parts = html.escape(text).split("`")
  return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_page(a: dict) -> str:
  body = ["<h1>Data audit</h1>"]
  for caption, png in plots(a):
    body.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{png}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")
  for title, lines in sections(a):
    body.append(f"<h2>{html.escape(title)}</h2>")
    table = [ln for ln in lines if ln.startswith("|")]
    if table:
      rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table if not ln.startswith("|---")]
      body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"
                  + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                  + "</table>")
    items = [ln for ln in lines if not ln.startswith("|")]
    if items:
      body.append("<ul>" + "".join(f"<li>{_md_inline(ln.lstrip(' -'))}</li>" for ln in items if ln.strip()) + "</ul>")
  body.append("<details><summary>audit.json</summary><pre>"
              + html.escape(json.dumps(a, indent=2, ensure_ascii=False)) + "</pre></details>")
  style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}code{background:#f3f3f3}")
  return ("<!doctype html><html><head><meta charset='utf-8'><title>Data audit</title>"
          f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write(a: dict, out) -> dict[str, Path]:
  """out/audit.json, audit.md and audit.html; `out` is a folder path or a checked
  `jaxtune.outputs.Folder` (no file jaxtune did not write is replaced)."""
  from jaxtune import outputs

  if not isinstance(out, outputs.Folder):
    out = outputs.Folder(out, command="jaxtune data audit", flag="--out")
  paths = {k: Path(out.path(f"audit.{k}")) for k in ("json", "md", "html")}
  paths["json"].write_text(json.dumps(a, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  paths["md"].write_text(markdown(a), encoding="utf-8")
  paths["html"].write_text(html_page(a), encoding="utf-8")
  out.commit()
  return paths
