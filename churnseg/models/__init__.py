"""Estimators and model bookkeeping: segmentation, churn, evaluation, registry."""
