"""The training plot of the report email: loss and validation AP against step (matplotlib, Agg).

Drawn on the Airflow side from ``history.json`` (which the TensorFlow half extracts from the
run's TensorBoard events), so it needs matplotlib, never TensorFlow.
"""

from __future__ import annotations

from pathlib import Path


def plot_history(history: dict[str, dict[str, list[list[float]]]], output: Path) -> Path:
    """Loss (training) and AP (evaluation) against step, side by side, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    train = history.get("train", {})
    evaluation = history.get("eval", {})
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for tag in sorted(train):
        if tag.endswith("loss") and train[tag]:
            steps, values = zip(*train[tag], strict=True)
            left.plot(steps, values, label=tag, linewidth=1.5 if tag == "total_loss" else 0.8)
    left.set(title="training loss", xlabel="step")
    left.set_yscale("log")
    for tag in ("coco/AP", "coco/AP50", "coco/AP75"):
        if evaluation.get(tag):
            steps, values = zip(*evaluation[tag], strict=True)
            right.plot(steps, values, marker="o", label=tag.split("/")[-1])
    right.set(title="validation AP", xlabel="step", ylim=(0, 1))
    if any(left.get_lines()):
        right.set_xlim(left.get_xlim())  # one evaluation point otherwise gets a meaningless axis
    for axis in (left, right):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png")
    plt.close(figure)
    return output
