"""Shared code of the experiment scripts (not part of the osnas package).

    jobs.py   search, derive, analyze and retrain+evaluate jobs on the package's own entry points,
              each cached in its run folder (an interrupted study continues where it stopped),
              and a pool of one-thread worker processes
    stats.py  mean +- standard error, paired differences, Holm's correction

A study script puts the experiments folder on sys.path and imports `from expkit import jobs`.
"""
