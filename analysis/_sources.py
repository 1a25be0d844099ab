"""Where a study frame came from: MLflow or an archive, one study or several combined.

The report reads, besides the frame, each study's spec and parent-run tags, a summary of the runs'
environments and per-run JSON artifacts. :class:`StudyReader` gives those from whichever source
the frame's attrs name (``attrs["archive"]`` for :func:`analysis.load_archive`, else
``attrs["tracking_uri"]``), so one report renders the same from either.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis._mlflow import open_client, read_json_artifact
from analysis.archive import archive_artifacts, environment_summary
from analysis.runs import _drop_duplicates

__all__ = ["CombineError", "StudyReader", "combine_studies"]

_SAME = ("objective", "direction", "baseline")


class CombineError(ValueError):
    """Studies that cannot be analysed as one (different objectives, directions or baselines)."""


def _parts(attrs: dict) -> list[dict]:
    return attrs.get("parts") or [attrs]


class StudyReader:
    """Specs, parent tags, environment summary and run artifacts of a frame's studies."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame
        self._parts = _parts(frame.attrs)

    def _archive(self, part: dict) -> Path | None:
        folders = part.get("archive")
        return Path(folders[0]) if folders else None

    def _run_ids(self, part: dict) -> list[str]:
        ids = part.get("run_ids")
        return list(self._frame["run_id"]) if ids is None else ids

    def specs(self) -> list[tuple[str, dict | list | None, dict]]:
        """(study, resolved spec or None, parent run tags) per study, in the frame's order."""
        out = []
        for part in self._parts:
            folder = self._archive(part)
            if folder is not None:
                spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
                meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
                out.append((part["study"], spec, meta["parent_tags"]))
            else:
                client = open_client(part["tracking_uri"])
                parent = part["parent_run_id"]
                out.append((part["study"], read_json_artifact(client, parent, "study.json"),
                            dict(client.get_run(parent).data.tags)))
        return out

    def environment(self) -> pd.DataFrame:
        """:func:`analysis.archive.environment_summary` over every run's env.json."""
        tables = []
        for part in self._parts:
            folder = self._archive(part)
            if folder is not None:
                tables.append(pd.read_csv(folder / "env.csv", dtype={"key": "str", "value": "str"},
                                          keep_default_na=False))
            else:
                client = open_client(part["tracking_uri"])
                envs = [read_json_artifact(client, r, "env.json") for r in self._run_ids(part)]
                tables.append(environment_summary(e for e in envs if isinstance(e, dict)))
        if len(tables) == 1:
            return tables[0].astype({"key": "str", "value": "str", "runs": "int64"})
        table = pd.concat(tables).groupby(["key", "value"], as_index=False)["runs"].sum()
        table["order"] = -table["runs"]
        table = table.sort_values(["key", "order", "value"], kind="stable").drop(columns="order")
        return table.reset_index(drop=True).astype({"key": "str", "value": "str", "runs": "int64"})

    def json_artifact(self, run_id: str, name: str) -> dict | list | None:
        """A run's JSON artifact (an archive keeps only each series' last epoch); None if absent."""
        for part in self._parts:
            if run_id not in set(self._run_ids(part)):
                continue
            folder = self._archive(part)
            client = (open_client(part["tracking_uri"]) if folder is None
                      else archive_artifacts([str(folder)]))
            return read_json_artifact(client, run_id, name)
        return None


def _between_study_fields(frames: list[pd.DataFrame], axes: list[str]) -> list[str]:
    """RunConfig fields (param columns, not axes or the seed) constant within every study but not
    the same in all of them."""
    params = dict.fromkeys(c for f in frames for c in f.attrs.get("param_columns") or [])
    out = []
    for column in params:
        if column in axes or column == "seed" or not all(column in f for f in frames):
            continue
        values = [f[column].astype(str).unique() for f in frames]
        if all(len(v) == 1 for v in values) and len({v[0] for v in values}) > 1:
            out.append(column)
    return out


def combine_studies(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Several study frames (of :func:`analysis.load_runs` or :func:`analysis.load_archive`) as one.

    The studies must share objective, direction and baseline. Rows keep their ``study`` column;
    a (cell, seed) finished in two studies (a study extended into another) is kept once, the run
    that ended first. Axes are the union (in order of appearance), seeds too (sorted). Settings
    that are fixed within each study but differ between them become an axis too, so the analysis
    compares the studies instead of pooling them: the one such RunConfig field (e.g. ``seq_len``
    for ``lstm-timesteps-10`` and ``lstm-timesteps-50``), or ``study`` itself when several fields
    differ together (``attrs["study_differs"]`` names them); its levels follow the order the
    studies were given.

    Returns:
        One frame; ``attrs["study"]`` is the names joined by `` + ``, ``attrs["parts"]`` each
        study's attrs with its ``run_ids``, and every other attr merged.

    Raises:
        CombineError: fewer than two frames, or they differ in objective, direction or baseline
            (the message names the studies and the values).
    """
    if len(frames) < 2:
        raise CombineError("combine_studies: needs at least two studies")
    first = frames[0].attrs
    for frame in frames[1:]:
        for key in _SAME:
            if frame.attrs.get(key) != first.get(key):
                raise CombineError(
                    f"studies {first.get('study')!r} and {frame.attrs.get('study')!r} have different "
                    f"{key}s ({first.get(key)!r} vs {frame.attrs.get(key)!r}): only studies with the "
                    "same objective, direction and baseline can be reported together")
    if len({bool(f.attrs.get("archive")) for f in frames}) > 1:
        raise CombineError("cannot combine studies from MLflow with studies from archives: export "
                           "the MLflow ones first (labbench export STUDY --out DIR)")
    names = [f.attrs.get("study") for f in frames]
    if len(set(names)) < len(names):
        raise CombineError(f"study {names[0]!r} given twice")
    combined = pd.concat(frames, ignore_index=True)
    combined, dropped = _drop_duplicates(combined)
    combined = combined.reset_index(drop=True)
    parts = [{**{k: v for k, v in f.attrs.items() if k != "parts"},
              "run_ids": list(f["run_id"])} for f in frames]
    uris = {f.attrs.get("tracking_uri") for f in frames}
    archives = [a for f in frames for a in f.attrs.get("archive") or []]
    axes = list(dict.fromkeys(a for f in frames for a in f.attrs.get("axes") or []))
    differs = _between_study_fields(frames, axes)
    levels: dict[str, list] = {}
    if len(differs) == 1:
        axes.append(differs[0])
        levels[differs[0]] = list(dict.fromkeys(f[differs[0]].iloc[0] for f in frames))
    elif differs:
        axes.append("study")
        levels["study"] = names
    attrs = {
        **{key: first.get(key) for key in _SAME},
        "study": " + ".join(names),
        "tracking_uri": uris.pop() if len(uris) == 1 else ", ".join(sorted(map(str, uris))),
        "parent_run_id": ", ".join(str(f.attrs.get("parent_run_id")) for f in frames),
        "axes": axes,
        "study_differs": differs,
        "levels": levels,
        "seeds": sorted({int(s) for f in frames for s in f.attrs.get("seeds") or []}),
        "seeds_source": ", ".join(sorted({str(f.attrs.get("seeds_source")) for f in frames})),
        "param_columns": sorted({c for f in frames for c in f.attrs.get("param_columns") or []}),
        "metric_columns": {k: v for f in frames for k, v in (f.attrs.get("metric_columns") or {}).items()},
        "n_failed": sum(int(f.attrs.get("n_failed") or 0) for f in frames),
        "excluded_runs": [r for f in frames for r in f.attrs.get("excluded_runs") or []],
        "duplicates_dropped": sum(int(f.attrs.get("duplicates_dropped") or 0) for f in frames)
        + len(dropped),
        "dropped_run_ids": sorted([r for f in frames for r in f.attrs.get("dropped_run_ids") or []]
                                  + dropped),
        "parts": parts,
    }
    if archives:
        attrs["archive"] = archives
    combined.attrs = attrs
    return combined
