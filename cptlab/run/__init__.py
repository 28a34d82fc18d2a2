"""Run directories: what a run writes (summary.json, report, plots) and how it is found again."""
