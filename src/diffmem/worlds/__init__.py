"""Embedded worlds with planted memorization: data, trained models and ground truth, built offline on CPU."""
