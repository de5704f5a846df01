"""`kind: hf` — a local transformers model, batched generation (CPU or GPU).

Concurrent requests with the same sampling parameters are generated together as one
left-padded batch (`MicroBatcher`); torch and transformers are imported only here.
"""

from __future__ import annotations

from typing import Any

from protege.prompts import alpaca
from protege.teachers.local import MicroBatcher, sampling_seed
from protege.teachers.base import Completion, Request


class HFTeacher:
    def __init__(self, spec: str, *, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from protege.models import public_id, resolve

        path = resolve(spec)
        self._torch = torch
        self.spec = spec
        self.name = public_id(spec)  # provenance: never an absolute path of this machine
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"  # generation continues from the right end of every row
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.chat = bool(getattr(self.tok, "chat_template", None))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # use_kernels=False: transformers 5 otherwise swaps in kernels from the Hub on CUDA, which fails offline
        # (measured on an H200 in training; the same loader is used here).
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", use_kernels=False).to(self.device).eval()
        self.info = {"kind": "hf", "endpoint": "in-process", "model": self.name}
        self._batcher = MicroBatcher(self._run, max_batch=batch_size)

    def _text(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        if not self.chat:  # a base model (or a student trained on it) answers the Alpaca prompt it was trained on
            return alpaca.prompt(request.messages or [])
        return self.tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)

    def _run(self, requests: list[Request]) -> list[Completion]:
        torch = self._torch
        s = requests[0].sampling
        max_new = int(s.get("max_tokens") or 256)
        temp = float(s.get("temperature", 1.0))
        # Chat templates write their own special tokens; the Alpaca prompt gets the tokenizer's BOS, as in training.
        enc = self.tok([self._text(r) for r in requests], return_tensors="pt", padding=True,
                       add_special_tokens=not self.chat).to(self.device)
        torch.manual_seed(sampling_seed(requests[0], self.spec))
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tok.pad_token_id,
                                      "do_sample": temp > 0}
        if temp > 0:
            gen_kwargs.update(temperature=temp, top_p=float(s.get("top_p", 1.0)))
        top = int(s.get("top_logprobs") or 1) if s.get("logprobs") else 0
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs, output_scores=bool(top), return_dict_in_generate=True)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        eos = set(self._eos_ids())
        results = []
        for b, (row, mask) in enumerate(zip(new.tolist(), enc["attention_mask"])):
            n = next((i for i, t in enumerate(row) if t in eos), None)
            tokens = row if n is None else row[:n]
            finish = "stop" if n is not None or len(tokens) < max_new else "length"
            results.append(Completion(self.tok.decode(tokens, skip_special_tokens=True), finish,
                                      int(mask.sum()), len(tokens), self.name,
                                      logprobs=self._logprobs(out.scores, b, tokens, top) if top else None))
        return results

    def _logprobs(self, scores: Any, b: int, tokens: list[int], top: int) -> list[list[Any]]:
        """`[[token, {alternative: logprob}], ...]` of row b, as an OpenAI-compatible server reports them (the scores
        are the logits generate chose from: raw under greedy decoding)."""
        out: list[list[Any]] = []
        for step, tok in enumerate(tokens):
            lp = self._torch.log_softmax(scores[step][b].float(), dim=-1)
            vals, ids = lp.topk(top)
            alts = {self.tok.decode([i]): float(v) for i, v in zip(ids.tolist(), vals.tolist())}
            alts.setdefault(self.tok.decode([tok]), float(lp[tok]))
            out.append([self.tok.decode([tok]), alts])
        return out

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        return [i for i in ids if i is not None] + ([self.tok.eos_token_id] if self.tok.eos_token_id is not None else [])

    async def complete(self, request: Request) -> Completion:
        return await self._batcher.submit(request)

    async def aclose(self) -> None:
        self._batcher.close()
