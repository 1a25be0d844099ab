"""OLS with sum-to-zero contrasts and a seed block, its ANOVA table, refused for designs it cannot analyse.

Re-exported by :mod:`analysis.stats`; see :func:`factor_effects`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf

from analysis._intervals import partial_eta_sq_interval

__all__ = ["factor_effects"]


def factor_effects(
    frame: pd.DataFrame,
    response: str,
    factors: Sequence[str],
    interactions: bool = True,
    typ: int | None = None,
    *,
    block: str | None = "seed",
    ci: float | None = 0.95,
) -> pd.DataFrame:
    """ANOVA of the factors with the seed as a block, partial eta squared per term with its CI.

    The model is ``response ~ C(block, Sum) + C(f1, Sum) * C(f2, Sum) * ...`` (all interactions)
    or, with ``interactions=False``, the factors' main effects only (``+``). Runs that share a
    seed are paired, so the seed enters as an additive block (a randomised complete block
    design): variation that a seed shares across configurations leaves the residual, and the
    residual is the seed x configuration interaction, with (cells - 1)(seeds - 1) degrees of
    freedom for one run per cell and seed. ``block=None`` fits the unpaired factorial model.
    Sum contrasts make each main effect the deviation from the grand mean averaged over the other
    factors. The default ANOVA type is II without interactions and III with them (type III is
    meaningful only with Sum contrasts, which is what is fitted); in the balanced designs
    accepted here types I, II and III agree anyway. Partial eta squared of a term is
    SS_term / (SS_term + SS_residual); its interval inverts the noncentral F (Steiger 2004).

    Args:
        frame: one row per run (e.g. from :func:`analysis.load_runs`).
        response: the response column (a metric).
        factors: the factor columns (each treated as categorical).
        interactions: include every interaction of the factors.
        typ: ANOVA sum-of-squares type 1, 2 or 3; default 3 with interactions, else 2.
        block: the blocking column (default ``"seed"``); None for no block.
        ci: confidence level of the partial eta squared intervals; None skips them (NaN), which
            saves a few ms per term (two root searches on the noncentral F each).

    Returns:
        One row per term (``a``, ``b``, ``a:b`` ..., then the block) then ``Residual``: ``term``,
        ``df``, ``sum_sq``, ``mean_sq``, ``F``, ``p_value``, ``partial_eta_sq``,
        ``eta_sq_low``, ``eta_sq_high`` (NaN for Residual). attrs: ``formula`` (with the real
        column names), ``typ``, ``n`` (runs), ``block``, ``n_blocks``, ``r_squared``,
        ``residual_df``, ``replicates`` (runs per cell, and per block if any), ``ci``.

    Raises:
        ValueError: a column is missing; ``response`` has missing values; a factor or the block
            has fewer than 2 levels; the design is unbalanced (the message names the cells and
            their run counts; with a block every cell needs every seed); or the residual degrees
            of freedom would be < 1 (too few seeds per cell).
    """
    factors = list(factors)
    if not factors:
        raise ValueError("factor_effects: no factors given")
    if typ is None:
        typ = 3 if interactions else 2
    if typ not in (1, 2, 3):
        raise ValueError(f"factor_effects: typ must be 1, 2 or 3, got {typ=}")
    if block is not None and block in factors:
        raise ValueError(f"factor_effects: the block {block!r} is also a factor")
    blocks = [block] if block is not None else []
    _require(frame, [response, *factors, *blocks])
    data = frame[[response, *factors, *blocks]].copy()
    nan = data[response].isna()
    if nan.any():
        who = frame.loc[nan, "run_id"].tolist() if "run_id" in frame.columns else []
        raise ValueError(
            f"factor_effects: response {response!r} is missing in {int(nan.sum())} run(s) "
            f"{who[:10]}; the ANOVA needs every run"
        )
    for f in [*factors, *blocks]:
        if data[f].isna().any():  # a param logged as None is a level of its own
            data[f] = data[f].astype(object).where(data[f].notna(), "None").astype(str)
        levels = data[f].unique()
        if len(levels) < 2:
            what = f"factor {f!r}" if f != block else f"block {f!r}"
            hint = "" if f != block else " (pass block=None to analyse one seed unpaired)"
            raise ValueError(
                f"factor_effects: {what} has {len(levels)} level(s) {list(levels)}; "
                f"each factor needs at least 2{hint}"
            )
    _replicates(data, [*factors, *blocks], response)
    n_levels = [data[f].nunique() for f in factors]
    reps = len(data) // int(np.prod(n_levels))  # runs per cell of the factors (balanced)
    n_params = int(np.prod(n_levels)) if interactions else 1 + sum(k - 1 for k in n_levels)
    n_params += data[block].nunique() - 1 if block is not None else 0
    resid_df = len(data) - n_params
    if resid_df < 1:
        raise ValueError(
            f"factor_effects: residual degrees of freedom would be {len(data)} runs - "
            f"{n_params} parameters = {resid_df}: too few seeds ({reps} run(s) per cell); "
            "add seeds" + ("" if not interactions else " or drop the interactions")
        )
    names = {f: f"f{i}" for i, f in enumerate(factors)}
    if block is not None:
        names[block] = "blk"
    data = data.rename(columns={response: "y", **names})
    joiner = " * " if interactions else " + "
    treat = joiner.join(f"C({names[f]}, Sum)" for f in factors)
    formula = "y ~ " + (f"C(blk, Sum) + {treat}" if block is not None else treat)
    model = smf.ols(formula, data=data).fit()
    table = sm.stats.anova_lm(model, typ=typ)
    back = {f"C({v}, Sum)": k for k, v in names.items()}
    terms = [
        t if t in ("Residual", "Intercept") else ":".join(back[p] for p in t.split(":")) for t in table.index
    ]
    out = pd.DataFrame(
        {
            "term": terms,
            "df": table["df"].to_numpy(dtype=float),
            "sum_sq": table["sum_sq"].to_numpy(dtype=float),
            "F": table["F"].to_numpy(dtype=float),
            "p_value": table["PR(>F)"].to_numpy(dtype=float),
        }
    )
    out = out[out["term"] != "Intercept"]
    # treatment terms first, then the block, then the residual
    rank = out["term"].map(lambda t: 2 if t == "Residual" else 1 if t == block else 0)
    out = out.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)
    out.insert(3, "mean_sq", out["sum_sq"] / out["df"])
    resid = out["term"] == "Residual"
    ss_resid = float(out.loc[resid, "sum_sq"].iloc[0])
    df_resid = float(out.loc[resid, "df"].iloc[0])
    out["partial_eta_sq"] = np.where(resid, np.nan, out["sum_sq"] / (out["sum_sq"] + ss_resid))
    bounds = [
        (np.nan, np.nan) if is_resid or ci is None else partial_eta_sq_interval(f, df, df_resid, ci)
        for f, df, is_resid in zip(out["F"], out["df"], resid, strict=True)
    ]
    out["eta_sq_low"] = [lo for lo, _ in bounds]
    out["eta_sq_high"] = [hi for _, hi in bounds]
    shown = joiner.join(f"C({f}, Sum)" for f in factors)
    out.attrs = {
        "formula": f"{response} ~ " + (f"C({block}, Sum) + {shown}" if block is not None else shown),
        "typ": typ,
        "n": len(data),
        "block": block,
        "n_blocks": int(data["blk"].nunique()) if block is not None else None,
        "r_squared": float(model.rsquared),
        "residual_df": float(model.df_resid),
        "replicates": reps,  # runs per cell of the factors
        "ci": ci,
    }
    return out


def _replicates(data: pd.DataFrame, factors: list[str], response: str) -> int:
    """Runs per cell of the full factorial; raise if they differ (naming the odd cells)."""
    counts = data.groupby(factors, observed=False).size()
    full = pd.MultiIndex.from_product([sorted(data[f].unique(), key=str) for f in factors])
    counts = counts.reindex(full if len(factors) > 1 else full.get_level_values(0), fill_value=0)
    typical = int(counts.mode().iloc[0])
    odd = counts[counts != typical]
    if len(odd):

        def label(key):
            key = key if isinstance(key, tuple) else (key,)
            return ", ".join(f"{f}={v}" for f, v in zip(factors, key, strict=True))

        listed = "; ".join(f"{label(k)}: {c} run(s)" for k, c in odd.head(10).items())
        more = f" and {len(odd) - 10} more" if len(odd) > 10 else ""
        raise ValueError(
            f"factor_effects: unbalanced design for {response!r} over {factors}: most cells have "
            f"{typical} run(s) but {listed}{more}; the ANOVA needs the same number of runs in "
            "every cell (re-run the missing cells or drop extra runs)"
        )
    return typical


def _require(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"factor_effects: missing column(s) {missing}")
