"""``lightning-viz summary LOGDIR``: a per-layer health table and the alerts, for a terminal."""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_viz import tags

COLUMNS = (
    (tags.FILTER_SCALAR, "noise", "noise"),
    (tags.FILTER_SCALAR, "update_noise", "update noise"),
    (tags.FILTER_SCALAR, "drift", "drift"),
    (tags.FILTER_SCALAR, "learned", "learned"),
    (tags.ACTIVATION_SCALAR, "zero_fraction", "zero frac"),
    (tags.ACTIVATION_SCALAR, "dead_fraction", "dead frac"),
    (tags.ACTIVATION_SCALAR, "localization", "localization"),
)


FLAGGED_BY = {
    "noisy_filters": ("update noise",),  # the noise of what training added, W - W0
    "exploding": ("drift",),
    "not_learning": ("learned",),
    "dead_channels": ("dead frac",),
    "nonfinite_weights": ("noise", "update noise", "drift", "learned"),
    "nonfinite_activations": ("zero frac", "dead frac", "localization"),
}
"""Which cells of a layer's row an active alert of each kind marks with ``!`` (the value that
crossed the callback's own threshold)."""


def runs(logdir: Path) -> list[Path]:
    """Every directory under ``logdir`` (itself included) that holds TensorBoard event files."""
    return sorted({path.parent for path in logdir.rglob("events.out.tfevents.*")})


def summarize(run: Path) -> str | None:
    """The health table and alerts of one run, or None when it holds no lightning-viz logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    layers: dict[str, dict[str, str]] = {}
    for template, key, column in COLUMNS:
        for tag in scalars:
            parsed = tags.split_layer_scalar(tag, template, [key])
            if parsed is not None:
                values = [e.value for e in events.Scalars(tag)]
                layers.setdefault(parsed[0], {})[column] = _cell(values)
    alerts = _alerts(events)
    trust = _trust(events, scalars)
    if not layers and not alerts and not trust:
        return None
    active: dict[str, list[str]] = {}
    for alert in alerts:
        if alert["state"] == "active":
            for layer in alert["layer"].split(", "):  # a notice on several: "a, b"
                active.setdefault(layer, []).append(alert["kind"])
    header = ["layer", *(column for _, _, column in COLUMNS), "active alerts"]

    def cell(layer: str, column: str) -> str:
        value = layers[layer].get(column, "-")
        flagged = any(column in FLAGGED_BY.get(kind, ()) for kind in active.get(layer, []))
        return f"{value} !" if flagged else value

    order = _model_order(events)
    rows = [
        [layer, *(cell(layer, c) for c in header[1:-1]), ", ".join(active.get(layer, []))]
        for layer in sorted(layers, key=lambda name: (_position(order, name), _natural(name)))
    ]
    lines = [f"run: {run}"]
    if rows:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        lines.append(
            "values: latest (change since the first); layers in "
            f"{'model' if order else 'name'} order; ! the value an active alert reads (past its "
            "threshold when raised; exploding clears once the drift falls below half of max_drift, "
            "so a drift can read below it, or once the learning rate fell to half its peak, and "
            "then reads the drift beyond where it was); - not "
            "measured for this layer (filter columns are a conv's, activation columns an "
            "activation's; a dead fraction needs "
            f"{tags.DEAD_AFTER_VALUES:,} values per channel, from several epochs where one has "
            "fewer)"
        )
    else:  # no monitor attached, or one that showed nothing (a notice says why)
        lines.append("layers: no filter or activation measured")
    overhead = _overhead(events, scalars)
    if overhead:
        lines.append(overhead)
    lines += trust
    health = [a for a in alerts if a["kind"] not in tags.NOTICE_KINDS]
    notices = [a for a in alerts if a["kind"] in tags.NOTICE_KINDS]
    health_lines = _alert_lines(health, state=True)
    together = ", alike ones on one line" if len(health_lines) < len(health) else ""
    lines.append(f"alerts: {len(health)}{together}")  # 9 over 3 lines read as a miscount
    lines += health_lines
    if notices:
        lines.append(f"notices (on lightning-viz or the setup, not on training): {len(notices)}")
        lines += _alert_lines(notices, state=False)
    return "\n".join(lines)


def _overhead(events: Any, scalars: set[str]) -> str | None:
    """One line: the share of training time lightning-viz took over the run (each logged
    interval weighted by its wall-clock length, the first from the run's first entry) and in
    the latest interval, per callback, the costliest first."""
    if tags.OVERHEAD not in scalars:
        return None
    total = events.Scalars(tags.OVERHEAD)
    first = min(events.Scalars(tag)[0].wall_time for tag in scalars)
    starts = [first] + [e.wall_time for e in total[:-1]]
    length = {e.step: max(e.wall_time - start, 0.0) for e, start in zip(total, starts, strict=True)}

    def run_share(entries: list[Any]) -> float:
        weights = [length.get(e.step, 0.0) for e in entries]
        if sum(weights) <= 0:
            return entries[-1].value
        return sum(e.value * w for e, w in zip(entries, weights, strict=True)) / sum(weights)

    prefix = tags.tag(tags.OVERHEAD_OF, "", "")
    shares = {
        tag[len(prefix) :]: run_share(events.Scalars(tag))
        for tag in scalars
        if tag.startswith(prefix)
    }
    costliest = sorted(shares, key=lambda name: (-shares[name], name))
    parts = [f"{name} {shares[name]:.1%}" for name in costliest]
    return (
        f"overhead: lightning-viz took {run_share(total):.1%} of training time "
        f"(latest epoch {total[-1].value:.1%}): {', '.join(parts)}"
    )


TRUST = (
    (tags.STABILITY, "", "stability"),
    (tags.SANITY, "", "sanity"),
    (tags.FAITHFULNESS, "deletion", "deletion AUC"),
    (tags.FAITHFULNESS, "deletion_random", "random-order deletion AUC"),
    (tags.LOCALIZATION, "pointing_game", "pointing game"),
)
"""The trust scores the summary shows per explained image, and their names there."""


def _trust(events: Any, scalars: set[str]) -> list[str]:
    """A line per explained image (the tag its scores go under): each trust score's latest
    value, then what the view's own text said of them at its latest render (settled or not,
    the warnings)."""
    found: dict[str, dict[str, float]] = {}
    for template, key, name in TRUST:
        for tag in scalars:
            head, tail = template.format(layer="\0", key=key).split("\0")
            explained = tag[len(head) : len(tag) - len(tail)] if tag.endswith(tail) else ""
            if not tag.startswith(head) or not explained or tag.endswith("/ssim"):
                continue
            found.setdefault(explained, {})[name] = events.Scalars(tag)[-1].value
    lines = []
    texts = set(events.Tags()["tensors"])
    for explained, values in sorted(found.items(), key=lambda item: _natural(item[0])):
        line = f"  {explained}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items())
        text_tag = tags.text_summary(f"{explained}/targets")
        if text_tag in texts:
            text = events.Tensors(text_tag)[-1].tensor_proto.string_val[0].decode()
            above = itertools.takewhile(lambda t: not t.startswith("|"), text.splitlines())
            said = " ".join(t.strip() for t in above if t.strip())
            line += f"; {said}" if said else ""  # its own sentences: in brackets, "0.9.)"
        lines.append(line)
    return ["trust scores of the explanations (latest):", *lines] if lines else []


def _alerts(events: Any) -> list[dict[str, Any]]:
    """Every alert raised in the run, in order, with its state now: active, or cleared (and
    when), and ``like``: the alert of the same step whose paragraph it shares (the table says
    it once, "as for 1"). The last text entry of a step holds every alert of that step, and
    the alerts of earlier steps still active."""
    text_tag = tags.text_summary(tags.ALERTS)
    if text_tag not in events.Tags()["tensors"]:
        return []
    by_step = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors(text_tag)}
    raised: list[dict[str, Any]] = []
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for step, text in sorted(by_step.items()):
        rows = tags.parse_alert_table(text)
        for row in rows:
            key = (row["kind"], row["layer"])
            if row["status"] == "cleared" and key in latest:
                latest[key]["state"] = f"cleared at step {step}"
                continue
            if row["status"] == "active" and key in latest:  # raised at an earlier step
                continue
            reference = _REFERENCE.match(row["what to check"])
            like = rows[int(reference[1]) - 1] if reference else None
            alert = {
                "step": step,
                "epoch": row.get("epoch", "-"),
                "kind": row["kind"],
                "layer": row["layer"],
                "message": (
                    f"{row['kind']} in {row['layer']!r} (as for {like['layer']!r})"
                    if like is not None
                    else row["what to check"]
                ),
                "like": latest.get((like["kind"], like["layer"])) if like is not None else None,
                "state": "active",
            }
            raised.append(alert)
            latest[key] = alert
    return raised


_REFERENCE = re.compile(r"^as for (\d+)")


def _alert_lines(alerts: list[dict[str, Any]], state: bool) -> list[str]:
    """A line per alert, the alerts of one step that share a paragraph (and a state) on its
    first's line, as the warnings name them ("also in 11 more: ...")."""
    others: dict[int, list[str]] = {}  # by id() of the alert on whose line they are named
    alone = []
    for alert in alerts:
        like = alert["like"]
        if (
            like is not None
            and id(like) in others
            and (like["step"], like["state"]) == (alert["step"], alert["state"])
        ):
            others[id(like)].append(repr(alert["layer"]))
        else:
            alone.append(alert)
            others[id(alert)] = []
    lines = []
    for alert in alone:
        also = others[id(alert)]
        more = f" (also in {len(also)} more: {', '.join(also)})" if also else ""
        status = f" [{alert['state']}]" if state else ""
        lines.append(
            f"  - step {alert['step']} (epoch {alert['epoch']}){status} {alert['message']}{more}"
        )
    return lines


def _position(order: dict[str, int], name: str) -> int:
    """Where ``name`` (a layer, or a module's later call ``name#2``) sorts in ``order``: its own
    place if the layout gave it one, else its module's (beside its first call), else last."""
    return order.get(name, order.get(tags.called_layer(name), len(order)))


def _model_order(events: Any) -> dict[str, int]:
    """Each layer's position in the model, from the custom-scalars layout the callbacks wrote
    (its :func:`~lightning_viz.tags.layer_section` titles follow the order the first training
    batch ran the layers in, a call apart from the module's others); empty without it."""
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    if metadata.CONFIG_SUMMARY_TAG not in events.Tags()["tensors"]:
        return {}
    layout = layout_pb2.Layout()
    proto = events.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto
    layout.ParseFromString(proto.string_val[0])
    names = [name for c in layout.category for name in tags.section_layers(c.title)]
    return {name: index for index, name in enumerate(names)}


def _natural(name: str) -> list[Any]:
    """Sort key that puts ``features.2`` before ``features.10`` (model order for numbered
    children, so a conv sits beside the activation that follows it)."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    ]


def _cell(values: list[float]) -> str:
    latest = values[-1]
    if not math.isfinite(latest):
        return "nan"
    if len(values) < 2:
        return f"{latest:.3g}"
    return f"{latest:.3g} ({latest - values[0]:+.2g})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-viz", description="lightning-viz tools")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="per-layer health table and alerts of a run")
    summary.add_argument("logdir", type=Path, help="a TensorBoard log directory")
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        print(f"lightning-viz: {args.logdir} is not a directory", file=sys.stderr)
        return 2
    tables = [table for run in runs(args.logdir) if (table := summarize(run)) is not None]
    if not tables:
        csv = next(args.logdir.rglob("metrics.csv"), None)
        print(
            f"lightning-viz: no lightning-viz logs under {args.logdir} (no filters/*, "
            "activations/* or alerts entries in its TensorBoard event files)"
            + (
                f"; the summary reads TensorBoard's event files, not a CSVLogger's {csv}: "
                "attach a TensorBoardLogger"
                if csv is not None
                else ""
            ),
            file=sys.stderr,
        )
        return 1
    try:
        print("\n\n".join(tables), flush=True)
    except BrokenPipeError:  # `lightning-viz summary logs | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return 0
