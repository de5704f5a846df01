"""The run configuration: `schema` (the pydantic models mirrored 1:1 in YAML, and their rules) and `load`
(a YAML file + `--set` overrides -> a validated `RunConfig` with absolute paths, or one `UserError`).

Import from here: `from protege.config import RunConfig, load_config`.
"""

from protege.config.load import (apply_overrides, format_validation_error, load_config, parse_override,
                                  resolve_paths, validate_config)
from protege.config.schema import (EVAL_RESERVED, SUPPORTED_LANGUAGES, CandidateConfig, CurateConfig, EvalConfig,
                                    GenerateConfig, GovernanceConfig, RunConfig, SamplingConfig, SplitConfig,
                                    StudentConfig, TeacherConfig, TermsOverride, TrainConfig)

__all__ = ["EVAL_RESERVED", "SUPPORTED_LANGUAGES", "CandidateConfig", "CurateConfig", "EvalConfig", "GenerateConfig",
           "GovernanceConfig", "RunConfig", "SamplingConfig", "SplitConfig", "StudentConfig", "TeacherConfig",
           "TermsOverride", "TrainConfig", "apply_overrides", "format_validation_error", "load_config",
           "parse_override", "resolve_paths", "validate_config"]
