"""Run directories: typed results to CSV and back, the summary, plots, galleries, the HTML
report, and console progress."""
