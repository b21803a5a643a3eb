"""Reports: HTML staging and evaluation reports, their SVG and PNG plots, and evaluation output files."""
