"""The generate stage: the teacher writes new records. `run` is what `protege generate` calls.

Modules: stage.py (the stage function, dry run, `python -m protege.generate`), context.py (output files,
progress, the context a mode runs in), self_instruct.py and modes.py (respond, explain, self-chat).
"""

from protege.generate.stage import MODES, dry_run_report, main, run

__all__ = ["MODES", "dry_run_report", "main", "run"]
