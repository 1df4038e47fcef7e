"""Evaluation metrics: plain functions, no network access."""

from cpueval.metrics.classification import classification_metrics
from cpueval.metrics.squad import exact_match_score, f1_score, f1_score_v2, normalize_answer, squad_v1, squad_v2
from cpueval.metrics.token_classification import token_classification_metrics

__all__ = [
    "classification_metrics",
    "exact_match_score",
    "f1_score",
    "f1_score_v2",
    "normalize_answer",
    "squad_v1",
    "squad_v2",
    "token_classification_metrics",
]
