"""What a drift method's threshold means, apart from :mod:`mlwp.monitoring.drift` (numpy at
import): the definitions' schema checks a threshold while the DAG processor parses, which
imports nothing heavy."""

from __future__ import annotations

# The methods whose score is a p-value (Evidently flags drift when it is below the
# threshold), so their threshold is a significance level, between 0 and 1: at 1 or above
# every column is flagged in every window (a "5" meant as 5 % does exactly that). The others
# score a distance, flagged at or above the threshold.
P_VALUE_METHODS = frozenset(
    {
        "anderson",
        "chisquare",
        "cramer_von_mises",
        "empirical_mmd",
        "es",
        "fisher_exact",
        "g_test",
        "ks",
        "mannw",
        "t_test",
        "TVD",
        "z",
    }
)


def threshold_problem(method: str | None, threshold: float | None) -> str | None:
    """Why ``threshold`` cannot be ``method``'s (a p-value method's outside (0, 1)), or None."""
    if method in P_VALUE_METHODS and threshold is not None and not 0 < threshold < 1:
        return (
            f"{method!r} scores a p-value, so its threshold is a significance level between "
            f"0 and 1 (e.g. 0.05), got {threshold!r}"
        )
    return None
