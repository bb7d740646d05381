"""Eval: held-out loss, task metrics, baselines, verdicts and the HTML report."""
