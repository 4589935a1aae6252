"""Learning curves: the one figure of accuracy and loss by epoch that the report (one run, or
every member of a population) and compare (several runs) draw. Matplotlib only: no jax."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SPLIT_STYLES = {"train": "--", "val": ":", "test": "-"}
NOTE = "train: running average over each epoch, in training mode"


def curves(runs: dict[str, list[dict]], path: pathlib.Path, title: str,
           splits=("train", "val", "test"), groups: dict[str, str] | None = None) -> str:
  """Accuracy and loss by epoch of every run ({label: metrics rows}), one line per split the
  rows hold. One run: a colour per split; several: a colour per run, or per group when
  `groups` ({label: group}) gives them (one legend entry per group). Returns the file name."""
  fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
  names = list(dict.fromkeys((groups or {}).get(label, label) for label in runs))
  labelled, last_epoch = set(), 1.0
  for label, rows in runs.items():
    group = (groups or {}).get(label, label)
    epochs = [r["epoch"] for r in rows]
    last_epoch = max(last_epoch, epochs[-1])
    for i, split in enumerate(s for s in splits if f"{s}_accuracy" in rows[0]):
      colour = f"C{i}" if len(runs) == 1 else f"C{names.index(group) % 10}"
      name = split if len(runs) == 1 else f"{group} {split}"
      # markers on every line: a run with a single evaluation still shows its points
      style = {"color": colour, "marker": "o", "ms": 3, "lw": 1,
               "alpha": 0.7 if groups else 1.0, "label": None if name in labelled else name}
      labelled.add(name)
      ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in rows], SPLIT_STYLES[split],
                  **style)
      ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], SPLIT_STYLES[split], **style)
  ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
  ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
  for ax in (ax_acc, ax_loss):
    ax.set_xlim(0, last_epoch * 1.05)  # (a single evaluation: still an epoch axis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{title} ({NOTE})" if "train" in splits else title)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return pathlib.Path(path).name
