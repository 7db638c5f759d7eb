"""Figures for `osnas plot`, drawn from run folders only (no model, no data set needed).

readers  run folders and metrics.json -> validated, typed records (OsnasError naming the file)
common   style, colours, saving
search   alpha heat-map, alpha trajectories, entropy, several-seed agreement
results  cross-domain bars, ranked-retrieval grids, retrain curves

`osnas.plot.run_plot` picks what to draw from what each folder holds.
Figures are `matplotlib.figure.Figure` objects built without pyplot (headless, no global state).
"""
