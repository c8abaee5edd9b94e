"""Training-dynamics diagnostics (columns: docs/results.md; studies: docs/studies.md): pure functions plus the
``DiagnosticsTracker`` that logs them."""
from revgn_cli.metrics.cka import CKAReference, cka_prepared, linear_cka, prepare_cka
from revgn_cli.metrics.function_space import (
    disagreement,
    error_barrier,
    expected_disagreement,
    interpolate_params,
    normalised_function_distance,
)
from revgn_cli.metrics.loss_change import loss_change_pct, loss_change_summary
from revgn_cli.metrics.ntk import empirical_ntk, kernel_distance, kernel_similarity, probe_similarity
from revgn_cli.metrics.ntk_feature import dense_feature_ntk, feature_ntk_apply, feature_probe
from revgn_cli.metrics.tracker import DiagnosticsTracker, half_coupling_outputs
from revgn_cli.metrics.weights import (
    half_layer_names,
    initial_weights,
    weight_cosine,
    weight_norm_ratio,
    weight_similarity,
)

__all__ = [
    "empirical_ntk", "kernel_similarity", "kernel_distance", "probe_similarity",
    "feature_probe", "feature_ntk_apply", "dense_feature_ntk", "half_coupling_outputs",
    "linear_cka", "prepare_cka", "cka_prepared", "CKAReference",
    "weight_cosine", "weight_norm_ratio", "weight_similarity", "initial_weights", "half_layer_names",
    "loss_change_pct",
    "loss_change_summary",
    "disagreement", "expected_disagreement", "normalised_function_distance", "interpolate_params", "error_barrier",
    "DiagnosticsTracker",
]
