"""The train stage: a curated dataset -> a student model. `run` is what `protege train` calls.

Modules: stage.py (the stage function and `python -m protege.train`), data.py, loss.py, trainer.py,
preflight.py, presets.py (+ presets/ launch files), output.py. Only this package imports them.
"""

from protege.train.stage import main, run

__all__ = ["main", "run"]
