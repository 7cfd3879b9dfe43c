"""kdigits data plane: code that runs inside Ray jobs (datasets, training, inference).

Nothing here imports `controller`; the controller only talks to these modules through
their entrypoints, the object store and the event lines they print.
"""
