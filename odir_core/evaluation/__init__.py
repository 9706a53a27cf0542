"""Evaluation layer: the inference protocol both packages plug into, evaluate and predict, decision
thresholds, reports, plots and the HTML report."""
