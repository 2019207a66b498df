"""Cramér's V as a Great Expectations metric and expectation: the association between the label and a
metadata column or confounder flag (:data:`ml.quality.checks` uses it for ``association:<column>``)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider
from scipy.stats.contingency import association


class TableColumnPairCramersV(TableMetricProvider):
    """Bias-corrected Cramér's V between two categorical columns (0: independent, 1: one determines
    the other); see :func:`cramers_v`."""

    metric_name = "skinflow.table.column_pair_cramers_v"
    value_keys = ("column_A", "column_B", "bias_correction")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(
        cls,
        execution_engine: PandasExecutionEngine,
        metric_domain_kwargs: dict,
        metric_value_kwargs: dict,
        metrics: dict[str, Any],
        runtime_configuration: dict,
    ) -> float:
        df, _, _ = execution_engine.get_compute_domain(metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE)
        kw = metric_value_kwargs
        return cramers_v(df[kw["column_A"]], df[kw["column_B"]], bool(kw["bias_correction"]))


class ExpectColumnPairCramersVToBeLessThan(BatchExpectation):
    """Expect the association (Cramér's V) between ``column_A`` and ``column_B`` to be below ``threshold``."""

    column_A: str
    column_B: str
    threshold: float
    bias_correction: bool = True

    metric_dependencies: ClassVar[tuple[str, ...]] = (TableColumnPairCramersV.metric_name,)
    success_keys: ClassVar[tuple[str, ...]] = ("column_A", "column_B", "threshold", "bias_correction")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        observed = float(metrics[TableColumnPairCramersV.metric_name])
        return {"success": observed < self.threshold, "result": {"observed_value": observed}}


def cramers_v(a: pd.Series, b: pd.Series, bias_correction: bool = True) -> float:
    """Cramér's V of two categorical series (missing values are a category); 0 for a single level.

    With ``bias_correction`` (Bergsma 2013) the chance association of small samples is removed:
    plain V of one flagged image among 60 in 10 classes is ~0.39, corrected ~0.
    """
    table = pd.crosstab(a.astype(str), b.astype(str)).to_numpy()
    if min(table.shape) < 2:
        return 0.0
    v = float(association(table, method="cramer"))
    if not bias_correction:
        return v
    n, (r, k) = table.sum(), table.shape
    phi2 = max(0.0, v**2 * min(r - 1, k - 1) - (r - 1) * (k - 1) / (n - 1))
    r_c, k_c = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    return float(np.sqrt(phi2 / min(r_c - 1, k_c - 1)))
