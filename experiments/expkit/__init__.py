"""Shared code of the experiment scripts (not part of the osnas package).

    jobs.py   search, derive, analyze and retrain+evaluate jobs on the package's own entry points,
              each cached in its run folder (an interrupted study continues where it stopped),
              and a pool of one-thread worker processes
    stats.py  mean +- standard error, paired differences, Holm's correction
    protocol.py  one family of domains through the comparison every study makes
    report.py    from a family's results to the figures a study reports
    provenance.py  the commit a run ran at, and its command with OUT and DATA for outside paths

A study script puts the experiments folder on sys.path and imports `from expkit import jobs`.
"""
