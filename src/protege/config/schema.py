"""The run configuration's schema: pydantic models mirrored 1:1 in YAML, with their rules.

The names in `RunConfig` and its blocks are the contract of `shared/docs/architecture.md`
(users, docs and tests rely on them): extend freely, rename nothing. A rule that spans fields is a
model validator here, so `protege config` refuses what a stage would. Reading a file is config/load.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


# Languages the curate language filter knows (its script heuristic lives in curate/filters.py).
SUPPORTED_LANGUAGES = ("ar", "de", "el", "en", "es", "fr", "he", "hi", "it", "ja", "ko", "nl", "pt", "ru", "th",
                       "uk", "zh")


class _Block(BaseModel):
    """Base for every config block: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(_Block):
    """A teacher LLM (also the shape of an eval judge)."""

    kind: Literal["openai", "llamacpp", "hf", "vllm"]
    model: str = Field(description="API model name, or a model spec for llamacpp/hf/vllm")
    base_url: str | list[str] | None = Field(
        None, description="openai kind: the endpoint, or a list of replicas serving the same model "
                          "(requests go to the least busy one; docs/scale.md)")
    api_key_env: str | None = Field(None, description="NAME of the env variable holding the key")
    api: Literal["chat", "completions"] = "chat"
    http: Literal["auto", "httpx", "aiohttp"] = Field(
        "auto", description="openai kind: the SDK's HTTP transport; auto = aiohttp when installed (cheaper per request)")
    max_concurrency: int = Field(16, ge=1, le=4096)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(6, ge=0, le=100)
    max_consecutive_failures: int = Field(
        8, ge=1, le=100000,
        description="circuit breaker: stop the run after this many failed attempts in a row with no success "
                    "(429 rate limits excluded); everything received is kept and a rerun resumes")
    json_mode: bool = False
    # USD per million tokens; None = not priced (the cost ledger then says "unknown").
    price_input_per_mtok: float | None = Field(None, ge=0)
    price_output_per_mtok: float | None = Field(None, ge=0)
    # Local backends (llamacpp/hf/vllm).
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)

    @field_validator("base_url")
    @classmethod
    def _url_is_http(cls, v: str | list[str] | None) -> str | list[str] | None:
        # A typo in a URL must read as a config error, not as a slow teacher.
        if v is None:
            return v
        from urllib.parse import urlsplit

        if isinstance(v, list):  # replicas of one model
            if not v:
                raise ValueError("an empty list of replicas: give at least one URL, or leave base_url out")
            if len(set(v)) < len(v):
                raise ValueError("the same URL is listed twice: each replica once")
        for url in v if isinstance(v, list) else [v]:
            where = f"{url!r}: " if isinstance(v, list) else ""
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018  (raises ValueError on a bad port)
            except ValueError as err:
                raise ValueError(f"{where}not a valid URL ({err}); write it like http://127.0.0.1:8000/v1") from None
            if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
                raise ValueError(f"{where}must be an http:// or https:// URL with a host, like "
                                 "http://127.0.0.1:8000/v1")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _key_is_a_name(cls, v: str | None) -> str | None:
        # Catch the classic mistake of pasting the key itself: it would end up in the run dir.
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(
                "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                "never the key itself"
            )
        return v

    @model_validator(mode="after")
    def _backend_fits_model(self) -> TeacherConfig:
        if self.kind == "llamacpp" and self.model.startswith("hf:"):
            raise ValueError(f"kind llamacpp runs GGUF files, but model {self.model!r} is a Hugging Face repo: "
                             "use kind: hf, or a gguf:PATH / named offline model")
        if self.kind != "openai" and self.base_url is not None:
            raise ValueError(f"base_url is for kind: openai (an HTTP endpoint); kind {self.kind} runs in-process")
        return self


class SamplingConfig(_Block):
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)


class GenerateConfig(_Block):
    mode: Literal["self-instruct", "respond", "explain", "self-chat"] = "self-instruct"
    num: int = Field(1000, ge=1)
    instructions: str | None = None
    budget_usd: float | None = Field(None, gt=0)
    max_requests: int | None = Field(None, ge=1)
    seed: int = 0
    sampling: SamplingConfig = SamplingConfig()
    # self-instruct
    num_prompt_tasks: int = Field(3, ge=1, le=20, description="example tasks shown per request")
    num_generated_in_prompt: int = Field(0, ge=0, le=20, description="of those, from kept tasks")
    tasks_per_request: int = Field(10, ge=1, le=50)
    continuations: int = Field(2, ge=0, le=10, description="a reply that stops with fewer tasks than asked is "
                               "continued in the same conversation up to this many times (0: never)")
    output_words: int = Field(150, ge=5, le=5000, description="ask for outputs preferably under this many words "
                              "(Alpaca asked for under 100; shorter outputs cost fewer teacher tokens per task)")
    variety: Literal["broad", "seeds"] = Field(
        "broad", description="what kinds of task to ask for: broad = many kinds of work (Alpaca's prompt); seeds = "
                             "the kinds the seed tasks show (new subjects and inputs), to specialise on your tasks")
    # respond / explain
    output: Literal["replace", "add"] = "replace"
    system_prompts: list[str] | None = None
    # self-chat
    turns: int = Field(3, ge=1, le=50)
    drop_truncated: bool = Field(
        True, description="drop answers cut off at max_tokens (finish_reason=length) to generate/dropped.jsonl")
    # respond / explain with an openai teacher: the OpenAI Batch API (asynchronous, half price; docs/scale.md)
    batch_api: bool = Field(False, description="send the requests as OpenAI Batch API jobs (upload, poll, "
                            "download), then write the records from the cache; resumable")
    batch_poll_s: float = Field(60, gt=0, description="batch_api: seconds between status checks of a batch")

    @model_validator(mode="after")
    def _consistent(self) -> GenerateConfig:
        if self.num_generated_in_prompt > self.num_prompt_tasks:
            raise ValueError(f"num_generated_in_prompt ({self.num_generated_in_prompt}) is larger than "
                             f"num_prompt_tasks ({self.num_prompt_tasks}): lower it")
        if self.batch_api and self.mode not in ("respond", "explain"):
            raise ValueError(f"batch_api sends a known list of requests, but mode {self.mode} decides each request "
                             "from earlier answers: use mode respond or explain, or set batch_api: false")
        if self.mode in ("respond", "explain") and not self.instructions:
            raise ValueError(f"mode {self.mode} answers given instructions: set generate.instructions to a file "
                             "of them (any supported format; a .txt with one per line works)")
        return self


class SplitConfig(_Block):
    val: float = Field(0.05, ge=0, lt=1)
    test: float = Field(0.05, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(f"val {self.val} + test {self.test} leave nothing to train on: keep their sum below 1")
        return self


class CurateConfig(_Block):
    rouge_threshold: float = Field(0.7, ge=0, le=1)
    dedup_field: Literal["instruction", "output", "prompt"] = "instruction"
    dedup_mode: Literal["exact", "minhash"] = "exact"
    min_output_words: int = Field(1, ge=0)
    max_output_words: int | None = Field(None, ge=1)
    drop_refusals: bool = True
    blocklist: list[str] | None = None
    language: str | None = None
    decontaminate: list[str] = []
    decontam_ngram: int = Field(13, ge=1)
    decontam_action: Literal["drop", "flag"] = Field(
        "drop", description="drop contaminated records, or keep them marked in meta.contamination"
    )
    seeds_license: str | None = Field(
        None, description="licence of the seed tasks, for the dataset card (e.g. Apache-2.0)"
    )
    judge: TeacherConfig | None = None
    judge_threshold: int = Field(4, ge=1, le=5)
    split: SplitConfig = SplitConfig()

    @field_validator("language")
    @classmethod
    def _known_language(cls, v: str | None) -> str | None:
        if v is not None and v not in SUPPORTED_LANGUAGES:
            raise ValueError(f"the language filter knows {', '.join(SUPPORTED_LANGUAGES)}; set null to skip it")
        return v


class StudentConfig(_Block):
    model: str = Field(description="any model spec: a named offline model, hf:ORG/NAME, gguf:PATH, a dir")


class TrainConfig(_Block):
    method: Literal["lora", "full", "qlora"] = "lora"
    data: str | None = None
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)
    max_seq_len: int = Field(1024, ge=16)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2.0e-4, gt=0)
    save_every: int = Field(100, ge=1)
    preset: Literal["auto", "cpu", "single-gpu", "multi-gpu"] = "auto"
    prompt_format: Literal["chat", "alpaca"] = "chat"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="0 = PEFT's and torchtune's default; dropout on CPU costs ~12% of a step (bernoulli)")
    target_modules: str | list[str] = "all-linear"
    grad_accum: int = Field(1, ge=1)
    token_budget: int | None = Field(None, ge=16, description="max tokens per micro-batch")
    gradient_checkpointing: bool | None = None
    bf16: bool | None = None
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    seed: int = 42
    fast_loss: bool = Field(True, description="loss on trained positions only, chunked (False: the model's "
                            "own full-logits loss; same values, slower, more memory)")
    fused_loss: Literal["auto", "liger", "protege"] = Field(
        "auto", description="kernel of the fast loss: liger (liger-kernel's fused linear cross-entropy, CUDA), "
        "protege (ours, chunked, any device); auto = liger on CUDA when liger-kernel is installed")
    compile: bool | None = Field(
        None, description="regional torch.compile of each decoder layer; null = preset (on with CUDA + "
        "Triton, off on CPU where it was measured slower)")
    master_weights: bool = Field(
        True, description="full fine-tunes with bf16 weights (GPU): AdamW steps fp32 master copies "
        "(false: AdamW on the bf16 weights themselves, 8 bytes/parameter less; small updates are lost)")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.fused_loss == "liger" and not self.fast_loss:
            raise ValueError("fused_loss: liger is a kernel of the fast loss; it needs fast_loss: true")
        if self.fused_loss == "liger" and self.preset == "cpu":
            raise ValueError("fused_loss: liger needs a CUDA GPU (Triton kernels); use fused_loss: protege or auto "
                             "with preset: cpu")
        if self.early_stopping_patience:
            every = self.eval_every or self.save_every
            if self.save_every % every:
                raise ValueError(f"early_stopping_patience: save_every ({self.save_every}) must be a multiple of "
                                 f"eval_every ({every}) so the best checkpoint can be restored "
                                 f"(e.g. eval_every: {self.save_every})")
        if self.method == "qlora" and self.preset == "cpu":
            raise ValueError("method qlora needs a CUDA GPU (bitsandbytes 4-bit); use method: lora with preset: cpu")
        return self


# Candidate names with a meaning of their own in eval.candidates (docs/evaluate.md).
EVAL_RESERVED = ("student", "base", "teacher", "reference")


class CandidateConfig(TeacherConfig):
    """An eval candidate given as a block: any model a teacher block can name, under a name of your choice."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in EVAL_RESERVED:
            raise ValueError(f"{v!r} names a built-in candidate ({', '.join(EVAL_RESERVED)}): pick another name, "
                             f"or write the plain string {v!r} in the list")
        return v


def _candidate_form(v: Any) -> str:
    """eval.candidates entries are names/specs/files (strings) or blocks: errors then name only the one meant."""
    return "block" if isinstance(v, (dict, CandidateConfig)) else "name"


class EvalConfig(_Block):
    sets: list[str] = Field([], description="eval files in any supported format (detected from their fields)")
    test_split: bool = Field(True, description="also evaluate the run's held-out test split when it exists")
    candidates: list[Annotated[Annotated[str, Tag("name")] | Annotated[CandidateConfig, Tag("block")],
                               Discriminator(_candidate_form)]] = Field(
        ["student", "base", "teacher"],
        description="student | base | teacher | reference | a model spec | a file of answers | a block "
                    "{name, kind, model, ...}")
    judge: TeacherConfig | None = None
    max_prompts: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(512, ge=1, le=32768, description="cap on each answer; answers that hit it are counted")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy (the default)")
    batch_size: int = Field(8, ge=1, le=256, description="prompts generated together by local candidates")
    seed: int = Field(0, description="bootstrap resampling (and sampling when temperature > 0)")
    bootstrap: int = Field(2000, ge=100, le=100000, description="bootstrap resamples for the 95% intervals")
    grade: bool = Field(False, description="also grade every answer 1-10 (MT-bench style single-answer grading)")
    judge_max_tokens: int = Field(256, ge=16, le=4096)
    judge_reference: bool = Field(
        True, description="show the judge the set's own answer to each prompt (a test split's outputs) as a reference "
                          "when comparing two candidates, neither of them the teacher (MT-bench's reference-guided judging)")
    judge_weighted: bool = Field(
        True, description="ask the judge for its token probabilities (logprobs) and report a probability-weighted win "
                          "rate averaged over both orders, which a position-biased judge cannot void (llama.cpp, "
                          "OpenAI, vLLM, hf judges return them; false for a server that rejects logprobs)")
    judge_check: bool = Field(
        True, description="check the judge on each set with its own answers (a test split's: the teacher's): judge them "
                          "against the base's, without showing them as reference; a judge that cannot prefer them cannot "
                          "rank two students, and the headline says so (two more judge calls per prompt, where a base "
                          "is a candidate; where a teacher or reference candidate is judged against the base, that pair is the check)")
    usd_per_hour: float | None = Field(
        None, ge=0, description="what the machine running local candidates costs per hour: prices self-hosted answers")
    in_run: bool = Field(False, description="`protege run` runs eval after train")

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        names = [c if isinstance(c, str) else c.name for c in self.candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidates appear twice: {', '.join(dupes)} (each candidate once; give blocks "
                             "distinct names)")
        if not names:
            raise ValueError("candidates is empty: list at least one (e.g. [student, base, teacher])")
        return self


class TermsOverride(_Block):
    """A user's addition to, or override of, the shipped teacher terms registry."""

    id: str
    provider: str | None = None
    match: list[str]
    status: Literal["allowed", "restricted", "conditional", "unknown"]
    condition: str = ""
    source: str | None = None
    checked: str | None = None


class GovernanceConfig(_Block):
    acknowledge: list[str] = Field(
        [], description="teacher ids or model names whose terms you have read and accept"
    )
    terms: list[TermsOverride] = []


class RunConfig(_Block):
    run_dir: str
    seeds: str | None = None
    teacher: TeacherConfig | None = None
    generate: GenerateConfig = GenerateConfig()
    curate: CurateConfig = CurateConfig()
    student: StudentConfig = StudentConfig(model="smollm2-135m-instruct")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    governance: GovernanceConfig = GovernanceConfig()

    @model_validator(mode="after")
    def _cross_block(self) -> RunConfig:
        t, g = self.teacher, self.generate
        if t is not None and g.budget_usd is not None and (t.price_input_per_mtok is None
                                                            or t.price_output_per_mtok is None):
            raise ValueError("generate.budget_usd is set but the teacher has no prices, so spend cannot be counted: "
                             "set teacher.price_input_per_mtok and teacher.price_output_per_mtok (USD per million "
                             "tokens), or cap with generate.max_requests")
        if g.batch_api and (t is None or t.kind != "openai" or isinstance(t.base_url, list) or t.api != "chat"):
            raise ValueError("generate.batch_api needs a teacher of kind openai with one base_url and api: chat "
                             "(a provider offering the OpenAI Batch API: /v1/files and /v1/batches)")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def hash(self) -> str:
        """sha256 of the canonical JSON form: what the manifest records to detect changes."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
