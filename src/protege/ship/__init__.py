"""Ship the student: serve it over an OpenAI-compatible API, chat with it, export it (HF, GGUF, Ollama).

- serve.py      `protege serve`: FastAPI app, admission (503 + Retry-After), the shared/exclusive model lane
- protocol.py   the OpenAI wire format: request bodies, replies, stream chunks, error bodies
- backends.py   the model behind serve and chat: transformers (batched through protege's HF teacher,
                streamed with TextIteratorStreamer) or llama.cpp (one sequence at a time)
- chat.py       `protege chat`: terminal chat with streaming, history, /reset, /system, /exit
- source.py     MODEL (run dir, adapter, model folder, GGUF, spec) -> what to load
- merge.py      LoRA adapter merged into its base; safetensors + tokenizer + chat template + EOS
- export.py     `protege export`: hf / gguf / ollama, the model card carried over, the self-check
- gguf.py       llama.cpp's converter (installed apart: it bundles its own `gguf` module) and quantisation
- check.py      the exported GGUF against the HF model: chat template, EOS, tokenizer, greedy agreement
- modelfile.py  the Ollama Modelfile: the chat template as a Go template, stop tokens, parameters

Heavy libraries (torch, transformers, llama_cpp, fastapi) are imported inside the functions that use them.
"""
