"""Builtin data sets from offline assets: Rotten Tomatoes snippets, chit-chat, tweets.

Both ship in PyPI packages (`jaxtune.data.assets`), so demos and tests run without the HF hub.
They come back as ordinary rows with origins; `build` splits them like any file, with the
seeded `data.split` (80/10/10 by default), so a split is the same on every call.

- 'rotten_tomatoes': 10,605 sentences (Pang & Lee) as `id<TAB>score<TAB>text` lines, UTF-8,
  CRLF. The score is VADER's human rating; the binary label follows the id (1-5331 positive,
  5332-10605 negative), as in the original polarity data. Columns: text, label, id, score.
- 'chitchat': 7,168 human conversations, a dict id -> {messages: [[{text, sender, ...}, ...]
  per turn], prompt, ...}. Consecutive turns alternate between two senders; the first speaker
  becomes 'user' and the other 'assistant', and a turn's messages join with newlines. The 3,150
  conversations where only one person spoke have no reply to learn and are left out.
  Columns: messages (role/content dicts), id, prompt.
- 'tweets' (train), 'tweets:validation', 'tweets:test', 'tweets:all': 38,158 crowd-labelled
  tweets, three classes, with a fixed trustworthy validation/test split (`jaxtune.data.tweets`).
- 'review_pairs', 'review_prompts', 'review_prompts:heldout': prompts asking for a one-sentence
  film review, with positive (chosen) and negative (rejected) Rotten Tomatoes answers from the
  train part of its seeded split, for preference and RL training (`jaxtune.data.reviews`).
"""

from __future__ import annotations

import json

from jaxtune.data import assets, reviews, tweets
from jaxtune.data.rows import BadRows, Row

NAMES = ("rotten_tomatoes", "chitchat", *tweets.NAMES, *reviews.NAMES)
ROTTEN_TOMATOES_POSITIVE_IDS = range(1, 5332)

# Settings a builtin implies when the config leaves them at their defaults.
DEFAULTS = {
  "rotten_tomatoes": {"kind": "classification", "label_names": "negative,positive"},
  "chitchat": {"kind": "sft", "sft_format": "chat"},
  # The held-out rows come with the data set (its own trustworthy split), not from data.split.
  "tweets": {"kind": "classification", "label_column": "sentiment",
             "label_names": "negative,neutral,positive", "validation_source": "tweets:validation",
             "test_source": "tweets:test"},
  "review_pairs": {"kind": "preference"},
  "review_prompts": {"kind": "prompts"},  # GRPO's prompts (data/prompts.py)
  "review_prompts:heldout": {"kind": "prompts"},
}


def read(name: str, bad: BadRows) -> list[Row]:
  if name == "rotten_tomatoes":
    return rotten_tomatoes(bad)
  if name == "chitchat":
    return chitchat(bad)
  if name in tweets.NAMES:
    return tweets.read(name)
  if name in reviews.NAMES:
    return reviews.read(name, lambda: rotten_tomatoes(bad))
  raise ValueError(f"unknown builtin data set {name!r} (known: {NAMES})")


def rotten_tomatoes(bad: BadRows) -> list[Row]:
  path = assets.rotten_tomatoes_txt()
  rows = []
  for i, raw in enumerate(path.read_bytes().split(b"\n"), 1):
    raw = raw.removesuffix(b"\r")
    if not raw.strip():
      continue
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      bad(str(path), i, f"invalid UTF-8 at byte {e.start} of the line", raw)
      continue
    parts = line.split("\t", 2)
    if len(parts) != 3 or not parts[0].isdigit():
      bad(str(path), i, "unparseable row: expected id<TAB>score<TAB>text", raw)
      continue
    ex_id = int(parts[0])
    label = "positive" if ex_id in ROTTEN_TOMATOES_POSITIVE_IDS else "negative"
    rows.append(Row({"text": parts[2], "label": label, "id": ex_id, "score": float(parts[1])},
                    str(path), i))
  return rows


def chitchat(bad: BadRows) -> list[Row]:
  path = assets.chitchat_json()
  data = json.loads(path.read_bytes().decode("utf-8"))
  rows = []
  for i, (conv_id, conv) in enumerate(data.items(), 1):
    messages, speakers = [], []
    for turn in conv.get("messages", []):
      senders = {m.get("sender") for m in turn}
      text = "\n".join(m["text"].strip() for m in turn if m.get("text", "").strip())
      if len(senders) != 1:
        bad(str(path), i, f"unparseable row: conversation {conv_id} has a turn with {len(senders)} senders", conv)
        break
      if not text:
        continue  # a turn of empty messages says nothing
      sender = senders.pop()
      if speakers and speakers[-1] == sender:
        messages[-1]["content"] += "\n" + text  # an empty turn between two of one speaker's
        continue
      if len(set(speakers)) == 2 and sender not in speakers:
        bad(str(path), i, f"unparseable row: conversation {conv_id} has more than two speakers", conv)
        break
      speakers.append(sender)
      role = "user" if sender == speakers[0] else "assistant"
      messages.append({"role": role, "content": text})
    else:
      if any(m["role"] == "assistant" for m in messages):
        rows.append(Row({"messages": messages, "id": conv_id, "prompt": conv.get("prompt", "")},
                        str(path), i))
  return rows
