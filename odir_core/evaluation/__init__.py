"""Evaluation layer: the inference protocol both packages plug into, evaluate and predict, label files and
the submission check, the metrics command, decision thresholds, reports, plots and the HTML report."""
