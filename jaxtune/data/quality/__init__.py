"""Data quality: audit, clean, deduplicate, balance and augment text classification data.

- `text`: normalisation and encoding checks (mojibake, control characters, HTML, URLs, language).
- `minhash`: MinHash signatures and LSH banding, verified by exact Jaccard.
- `audit`: every figure about a data set's splits (`jaxtune data audit`).
- `clean`: the cleaned data set plus every dropped row and its reason (`jaxtune data clean`).
- `balance`, `augment`: training-split transforms the run config can ask for.
- `train_split`: `data.clean/dedup/balance/augment` applied to the train rows of a run.
- `report`: audit.md and a self-contained audit.html.
"""
