"""Learning curves across continuations: where the 2-core recipe flattens.

Usage::

    python scripts/plot_selection_scores.py [--scores doc/diagnostics/selection-scores.json] \
        [--output doc/figures/model/selection_scores.png]

Reads the per-epoch selection scores of every decoder trained on ``sims-v3`` (recorded from the
runs' logs in ``doc/diagnostics/selection-scores.json``; a run's own curve is in its
``figures/learning_curves.png``) and draws them against the stamp passes each decoder has seen
in all, continuations included: the paper-size decoder's lineage on the left, the narrower
students on the right, the packaged model's score as a line on both. Prints a Markdown table of
each run's best score.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", type=Path, default=ROOT / "doc/diagnostics/selection-scores.json")
    parser.add_argument("--output", type=Path, default=ROOT / "doc/figures/model/selection_scores.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(args.scores.read_text())
    per_epoch = data["epoch_stamps"]
    teacher = data["teacher_score"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = {"128,96,64": axes[0], "96,64,32": axes[1]}
    rows = []
    for run in data["runs"]:
        ax = panels[run["decoder"]]
        # Epoch e ends after (e + 1) epochs of stamps; -1 marks a model scored at its start.
        points = sorted((int(e), s) for e, s in run["scores"].items())
        x = [(run["start_passes"] + (e + 1) * per_epoch) / 1e6 for e, _ in points]
        y = [s for _, s in points]
        ax.plot(x, y, "o-" if len(x) > 1 else "s", ms=4, label=run["name"])
        best = min(points, key=lambda p: p[1])
        rows.append(f"| `{run['name']}` | {run['decoder']} | {run['parent'] or 'scratch'} | {len(points)} | "
                    f"{best[1]:.4f} (epoch {best[0]}) | {x[-1]:.2f} |")
    for ax, title in ((axes[0], "paper-size decoder (128, 96, 64): continuations"),
                      (axes[1], "narrower students (96, 64, 32), distilled")):
        ax.axhline(teacher, color="k", lw=0.8, ls="--", label=f"packaged cpu6-a ({teacher})")
        ax.set_xlabel("stamp passes through the decoder, all continuations (millions)")
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("validation selection score (val_chi2_fraction)")
    fig.suptitle("sims-v3 validation stamps; the paper's recipe is ~37 million passes", fontsize=10)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    print("| run | decoder | from | epochs scored | best score | passes at its last epoch (M) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
