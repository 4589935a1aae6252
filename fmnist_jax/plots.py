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


def schedules(by_member: dict[int, list[dict]], fields: list[str], path: pathlib.Path) -> str:
  """PBT's schedules and lineage: one panel per explored field (each member's value by epoch,
  a dashed jump from its parent's value where it was replaced; a vector field's mean), and
  the lineage (an arrow from the parent to the member at each replacement). Returns the file
  name."""
  fig, axes = plt.subplots(1, len(fields) + 1, figsize=(4.5 * (len(fields) + 1), 4),
                           squeeze=False)
  def value(row, field):
    v = row[field]
    return sum(v) / len(v) if isinstance(v, list) else v
  lineage = axes[0, -1]
  for member, rows in by_member.items():
    colour = f"C{member % 10}"
    epochs = [r["epoch"] for r in rows]
    starts = [0] + [i for i, r in enumerate(rows) if "parent" in r] + [len(rows)]
    for ax, field in zip(axes[0], fields):  # (a line of its own between replacements)
      for a, b in zip(starts, starts[1:]):
        ax.plot(epochs[a:b], [value(r, field) for r in rows[a:b]], "-o", color=colour, ms=3,
                lw=1, label=f"m{member}" if a == 0 else None)
    lineage.plot(epochs, [member] * len(epochs), "-", color=colour, lw=0.8, alpha=0.4)
    for previous, row in zip(rows, rows[1:]):
      if "parent" not in row:
        continue
      parent_row = next((r for r in by_member[row["parent"]] if r["epoch"] == previous["epoch"]),
                        previous)
      for ax, field in zip(axes[0], fields):
        ax.plot([previous["epoch"], row["epoch"]], [value(parent_row, field), value(row, field)],
                "--", color=colour, lw=1)
      lineage.annotate("", (row["epoch"], member), (previous["epoch"], row["parent"]),
                       arrowprops={"arrowstyle": "->", "color": colour})
  for ax, field in zip(axes[0], fields):
    ax.set(xlabel="epoch", title=field + (" (mean)" if field == "dropout_rates" else ""))
    if field in ("learning_rate", "weight_decay"):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7, ncol=2)
  lineage.set(xlabel="epoch", ylabel="member", title="Lineage (parent -> member)",
              yticks=sorted(by_member))
  lineage.grid(alpha=0.3)
  fig.suptitle("Population-based training: each member's values, and whom it copied")
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return pathlib.Path(path).name
