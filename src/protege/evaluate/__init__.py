"""The eval stage: how close does the student come to its teacher, and at what cost? `run` is what
`protege eval` calls.

Modules: stage.py (the stage function), sets.py (eval files, detected from their fields), candidates.py
(who answers, through the teachers' engine), pairwise.py (judged pairs, warnings), stats.py (bootstrap
intervals), metrics.py (lengths, ROUGE-L, IFEval), cost.py (speed, memory, price), headline.py (the one
line printed at the end), ifeval.py (the IFEval checker). Only this package imports them.
"""

from protege.evaluate.stage import run

__all__ = ["run"]
