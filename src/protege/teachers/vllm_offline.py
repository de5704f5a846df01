"""`kind: vllm` — vLLM's offline engine on a GPU (import-guarded; only where vllm is installed).

Concurrent requests are gathered into one `LLM.chat`/`LLM.generate` call (vLLM batches them
on the GPU with continuous batching). Not yet run against a real vLLM (not in the image of the GPU
machine lent to this project, and too big to carry there); tests/teachers/test_vllm_offline.py checks
with a test double exactly what this module hands to vLLM (docs/scale.md, "GPUs").
"""

from __future__ import annotations

from typing import Any

from protege.errors import UserError
from protege.teachers.local import MicroBatcher, sampling_seed
from protege.teachers.base import Completion, Request


class VLLMTeacher:
    def __init__(self, spec: str, *, max_batch: int = 256) -> None:
        try:
            import vllm
        except ImportError:
            raise UserError("teacher.kind vllm needs vLLM, which is not installed (it needs a CUDA GPU)",
                            hint="pip install vllm  — or use kind: openai against a running `vllm serve`.") from None
        from protege.models import public_id, resolve

        self._vllm = vllm
        self.spec = spec
        self._llm = vllm.LLM(model=str(resolve(spec)))
        self.info = {"kind": "vllm", "endpoint": "in-process", "model": public_id(spec)}
        self._batcher = MicroBatcher(self._run, max_batch=max_batch, gather_s=0.05)

    def _run(self, requests: list[Request]) -> list[Completion]:
        s = requests[0].sampling
        params = [self._vllm.SamplingParams(temperature=s.get("temperature", 1.0), top_p=s.get("top_p", 1.0),
                                            max_tokens=s.get("max_tokens", 256), seed=sampling_seed(r, self.spec))
                  for r in requests]
        if requests[0].prompt is not None:
            outs = self._llm.generate([r.prompt for r in requests], params, use_tqdm=False)
        else:
            outs = self._llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [self._completion(o) for o in outs]

    def _completion(self, out: Any) -> Completion:
        gen = out.outputs[0]
        return Completion(gen.text, gen.finish_reason, len(out.prompt_token_ids or []), len(gen.token_ids),
                          self.info["model"])

    async def complete(self, request: Request) -> Completion:
        return await self._batcher.submit(request)

    async def aclose(self) -> None:
        self._batcher.close()
